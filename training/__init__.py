"""Offline training and evaluation of KeepFIT V2 models (stage 1 textual pretraining, stage 2 hybrid knowledge
injection, evaluation through the exported ONNX artifact).  Depends on :mod:`model`; nothing imports it."""
