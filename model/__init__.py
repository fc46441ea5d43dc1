"""KeepFIT V2 model library.

Torch-free at the top level: configs, preprocessing, tokenizer, knowledge (prompts), artifact I/O and the ONNX
Runtime encoder.  The torch model, its factory and the exporter live in :mod:`model.nn` and are only imported
by training and export entry points.
"""

__version__ = "0.1.0"
