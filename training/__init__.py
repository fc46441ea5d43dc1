"""Offline training and evaluation of KeepFIT V2 models (stage 1 textual pretraining, stage 2 hybrid knowledge
injection, evaluation through the exported ONNX artifact).  Depends on :mod:`model`; nothing imports it."""

import model  # noqa: F401  (first: it turns ONNX Runtime's telemetry off before any module here imports onnxruntime)

# ``keepfit`` subcommands (see model/__init__.py): name -> ("module:function", help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli:train_main", "train: `text` (stage 1) or `hybrid` (stage 2)"),
    "eval": (
        "training.cli:eval_main",
        "evaluate an artifact: zero-shot, retrieval, few-shot, linear-probe, suite, unseen-site, calibrate, "
        "synonyms, compare",
    ),
}
