"""The ``keepfit`` command.

Each subcommand is owned by the package it belongs to and imported only when it runs, so ``keepfit serve`` and
``keepfit index`` never import torch.  Errors the project raises on purpose end the command with one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from model.errors import KeepfitError

logger = logging.getLogger(__name__)

# name -> ("module:function", help).  The function takes argv (the arguments after the subcommand).
COMMANDS: dict[str, tuple[str, str]] = {
    "list-models": ("model.cli:list_models_main", "list the registered model configs"),
    "knowledge": ("model.cli:knowledge_main", "build knowledge.json from FLAIR's knowledge dictionary"),
    "info": ("model.cli:info_main", "verify an artifact and print its manifest summary"),
    "export": ("model.nn.commands:export_main", "export a checkpoint (or a fresh model) to an ONNX artifact"),
    "import-checkpoint": (
        "model.nn.commands:import_main",
        "convert a published FLAIR / KeepFIT v1 state dict into a keepfit checkpoint",
    ),
    "train": ("training.cli:train_main", "train: `text` (stage 1) or `hybrid` (stage 2)"),
    "eval": ("training.cli:eval_main", "evaluate an artifact: zero-shot, retrieval, few-shot, linear-probe"),
    "index": ("index.cli:main", "build, update, inspect and benchmark FAISS indexes"),
    "serve": ("service.cli:main", "run the HTTP API"),
    "classifier": ("service.classifier_cli:main", "few-shot classifiers of your own categories: fit, list, ..."),
}


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, func = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func)  # type: ignore[no-any-return]


def setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("KEEPFIT_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_command(func: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run an entry point; project errors and I/O errors become one line on stderr and exit status 2."""
    try:
        return int(func(argv) or 0)
    except KeepfitError as err:
        print(f"error: {err}", file=sys.stderr)  # noqa: T201
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        print(f"error: {err.strerror}: {err.filename}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="keepfit",
        description="KeepFIT V2 ophthalmic vision-language model: train, export, index, serve. Research use only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<18} {h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv:
        parser.print_help()
        return 2
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    ns = parser.parse_args(argv[:1])
    setup_logging()
    try:
        func = _resolve(COMMANDS[ns.command][0])
    except ModuleNotFoundError as err:
        print(f"error: `keepfit {ns.command}` needs {err.name!r}; install the matching extra (see README)",  # noqa: T201
              file=sys.stderr)
        return 2
    return run_command(func, argv[1:])


# ------------------------------------------------------------------------------ small torch-free commands
def list_models_main(argv: list[str]) -> int:
    from model.config import get_config, list_models

    argparse.ArgumentParser(prog="keepfit list-models", description="List the registered model configs.").parse_args(
        argv
    )
    for name in list_models():
        cfg = get_config(name)
        print(f"{name:<28} {cfg.vision.backbone:<18} {cfg.text.size:<10} {cfg.description}")  # noqa: T201
    return 0


def knowledge_main(argv: list[str]) -> int:
    import json
    from pathlib import Path

    from model.artifact import write_json_atomic
    from model.knowledge import build_knowledge

    p = argparse.ArgumentParser(prog="keepfit knowledge", description="Build knowledge.json.")
    p.add_argument("--dictionary", required=True, type=Path, help="FLAIR knowledge_dictionary.json")
    p.add_argument("--out", required=True, type=Path, help="output knowledge.json")
    args = p.parse_args(argv)
    data = build_knowledge(args.dictionary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, data)
    logger.info("wrote %s: %d categories, %d bytes", args.out, len(data["categories"]), len(json.dumps(data)))
    return 0


def info_main(argv: list[str]) -> int:
    import json
    from pathlib import Path

    from model.artifact import load_artifact

    p = argparse.ArgumentParser(prog="keepfit info", description="Verify an artifact and summarise it.")
    p.add_argument("artifact", type=Path)
    args = p.parse_args(argv)
    art = load_artifact(args.artifact)
    summary = {k: art.manifest.get(k) for k in ("name", "version", "created", "quantization", "parity", "evaluation")}
    summary["files"] = {n: m["bytes"] for n, m in art.manifest["files"].items()}
    print(json.dumps(summary, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
