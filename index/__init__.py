"""Build, search and maintain FAISS indexes of eye-image archives (DESIGN section 6).

``index.store`` is the torch-free read side the service uses (:class:`~index.store.VectorIndex`);
``index.build`` writes generations (build / add / remove / reindex) and ``index.cli`` is ``keepfit index``.
Nothing is imported here so that ``import index`` touches neither faiss nor the runtime.
"""

import model  # noqa: F401  (first: it turns ONNX Runtime's telemetry off before any module here imports onnxruntime)

# ``keepfit`` subcommands (see model/__init__.py): name -> ("module:function", help)
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("index.cli:main", "build, update, inspect and benchmark FAISS indexes"),
}
