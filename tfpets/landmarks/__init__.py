"""Pet-face landmark detector: a head-box model, then a landmark model inside the head crop.

Modules: `geometry` (affine maps shared by training, prediction and export), `augment` (tf.data
sampling of training frames), `data` (records to datasets), `model`, `losses`, `train`,
`evaluate`, `predict` (the two-stage `Detector`), `verifier` (the head verifier), `pipeline` (a
whole training run: the stages, the verifier, evaluation, report), `crop` (the head-cropped dataset
variant) and `export` (SavedModel and TFLite). The shared training helpers (time budget, best
weights, resumable state) are in `tfpets.runtime.training`.
"""
