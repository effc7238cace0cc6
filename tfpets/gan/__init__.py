"""StyleGAN2-ADA in TensorFlow 2 / Keras 3 (NHWC).

Modules: `presets` (the presets of the official train.py, `NetworkConfig`), `layers` (equalised-lr
dense/conv, modulated conv, noise, ToRGB, minibatch stddev), `networks` (mapping, synthesis,
Generator, Discriminator, saving/loading), `importers` (official TF1 and PyTorch pickles, read
with a restricted unpickler).
"""
