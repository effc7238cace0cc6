"""Exports for TF Serving and TFLite, one set of conventions for every model (docs/export.md).

Modules: `layout` (the versioned TF Serving folder layout, written atomically), `serving` (the
conventions: signatures, assets, metadata, the check for custom ops, `export`), `warmup` (TF
Serving warmup requests), `tflite` (TFLite conversion and interpreters) and the adapter of each
model (`generator`; the landmark detector's is `tfpets.landmarks.export`).
"""
