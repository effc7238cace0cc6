"""tfpets: fine-grained image classification with scarce data, TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
