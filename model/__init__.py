"""KeepFIT V2 model library.

Torch-free at the top level: configs, preprocessing, tokenizer, knowledge (prompts), artifact I/O and the ONNX
Runtime encoder.  The torch model, its factory and the exporter live in :mod:`model.nn` and are only imported
by training and export entry points.
"""

import os

__version__ = "0.1.0"

# ONNX Runtime (1.32 on Linux) keeps a device id under ~/.cache/Microsoft and sends usage events to Microsoft unless
# this is set before it is imported: a clinic's service and tools contact no one. Every package of this project
# imports this one first (their __init__), so it is set before any of them imports onnxruntime; an operator's own
# value stays.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# The ``keepfit`` subcommands this package owns: name -> ("module:function", help). The function takes the
# arguments after the subcommand. Each package declares its own table and pyproject.toml registers the tables
# (entry points ``keepfit.commands``), so the dispatcher (:mod:`model.cli`) names no package above this one.
COMMANDS: dict[str, tuple[str, str]] = {
    "list-models": ("model.cli:list_models_main", "list the registered model configs"),
    "knowledge": ("model.cli:knowledge_main", "build knowledge.json from FLAIR's knowledge dictionary"),
    "info": ("model.cli:info_main", "verify an artifact and print its manifest summary"),
    "artifact": ("model.cli:artifact_main", "`seal`: re-seal an artifact's manifest after a deliberate edit; `typicality`: add the unrecognised-image check"),
    "export": ("model.nn.commands:export_main", "export a checkpoint (or a fresh model) to an ONNX artifact"),
    "import-checkpoint": (
        "model.nn.commands:import_main",
        "convert a published FLAIR / KeepFIT v1 state dict into a keepfit checkpoint",
    ),
}
