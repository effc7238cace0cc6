"""Fine-grained classifiers: WS-DAN (both variants), ViT, EfficientNet and the Xception baseline,
with their augmentations, optimizer, training, evaluation, prediction and export."""
