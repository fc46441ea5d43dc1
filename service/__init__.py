"""The HTTP API (FastAPI) over the torch-free ONNX runtime, the FAISS index and a response cache.

Nothing is loaded at import: :func:`service.app.create_app` builds the app and its lifespan opens the artifact,
the index and the cache.  ``keepfit serve`` (:mod:`service.cli`) runs it under uvicorn.
"""

import model  # noqa: F401  (first: it turns ONNX Runtime's telemetry off before any module here imports onnxruntime)

# ``keepfit`` subcommands (see model/__init__.py): name -> ("module:function", help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.cli:main", "run the HTTP API"),
    "classifier": ("service.classifier_cli:main", "few-shot classifiers of your own categories: fit, list, ..."),
    "classify": ("service.batch_cli:main", "classify a folder or manifest of images as the API does, to CSV/JSONL"),
}
