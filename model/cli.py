"""The ``keepfit`` command.

Each subcommand is owned by the package it belongs to and imported only when it runs, so ``keepfit serve`` and
``keepfit index`` never import torch.  Errors the project raises on purpose end the command with one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from model.errors import KeepfitError
from model.logs import setup_logging

logger = logging.getLogger(__name__)

ENTRY_POINTS = "keepfit.commands"  # pyproject.toml: one entry per package, naming its COMMANDS table
# prometheus_client's variable and its old spelling: only keepfit serve (its workers) may keep metrics there
PROMETHEUS_MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def commands() -> dict[str, tuple[str, str]]:
    """Every subcommand: the ``COMMANDS`` tables of the packages, as the installed distribution registers them.

    This dispatcher sits below what it dispatches to: it names no package, the packages declare their commands
    (``model/__init__.py`` says how) and ``pyproject.toml`` lists the tables. Loading a table imports only that
    package's ``__init__``, which imports nothing, so ``keepfit --help`` stays torch-free and fast.
    """
    table: dict[str, tuple[str, str]] = {}
    for entry in entry_points(group=ENTRY_POINTS):
        for name, spec in entry.load().items():
            if name in table:
                raise KeepfitError(f"`keepfit {name}` is declared twice ({table[name][0]} and {spec[0]})")
            table[name] = spec
    return table


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, func = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ argument types shared by the commands
def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[low, high]`` (a bad one is argparse's one-line usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in messages and metavars
    return parse


def finite_float(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number (not nan or inf) within ``[low, high]`` (``(low, high]`` with
    ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            if low is not None and high is not None:
                bounds = f" in {'(' if low_open else '['}{low}, {high}]"
            elif low is not None:
                bounds = f" {'above' if low_open else 'at least'} {low}"
            else:
                bounds = f" at most {high}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be a finite number{bounds}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_at_least(1)


def run_command(func: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run an entry point; project errors and I/O errors become one line on stderr and exit status 2."""
    try:
        return int(func(argv) or 0)
    except KeepfitError as err:
        print(f"error: {err}", file=sys.stderr)  # noqa: T201
        return 2
    except BrokenPipeError:  # whoever read the output stopped (keepfit info ART | head -1): nothing to say
        # Python flushes stdout once more at exit, into the same closed pipe: point it at nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # as a command the pipe's signal ended
    except OSError as err:
        if err.errno is None:  # not the system's refusal (a library's OSError): a bug to show in full
            raise
        # a missing or unwritable path, a read-only file system, a full disk: what and where, in one line
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt as err:  # a command may say how to go on (keepfit train: --resume)
        print(str(err) or "interrupted", file=sys.stderr)  # noqa: T201
        return 130


def build_parser(table: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    """The ``keepfit`` parser: ``command`` (one of ``table``'s names, default :func:`commands`) and ``args``, the
    rest of the line, which the command parses itself when it runs (so building this imports no command)."""
    table = commands() if table is None else table
    parser = argparse.ArgumentParser(
        prog="keepfit",
        description="KeepFIT V2 ophthalmic vision-language model: train, export, index, serve. Research use only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<18} {h}" for n, (_, h) in sorted(table.items())),
    )
    parser.add_argument("command", choices=sorted(table), metavar="command", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _printable_streams() -> None:
    """Under a locale whose encoding cannot spell a file name (``LC_ALL=C`` without Python's UTF-8 mode, a Latin-1
    locale), printing an index's summary with a Chinese file name in it ended the command with a traceback after
    its work was done. Characters the terminal cannot show are written as escapes instead."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    table = commands()
    if not table:
        print("error: keepfit is not installed, so it has no commands: run `make install` "  # noqa: T201
              "(or pip install -e . in your environment)", file=sys.stderr)
        return 2
    parser = build_parser(table)
    if not argv:
        parser.print_help()
        return 2
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    ns = parser.parse_args(argv[:1])
    try:
        # a command's own --log-level / --log-format (keepfit serve's) beat the environment from the first line on:
        # a bad KEEPFIT_LOG_FORMAT stopped `keepfit serve --log-format json` that overrides it
        setup_logging(_flag_value(argv[1:], "--log-level"), _flag_value(argv[1:], "--log-format"))
    except KeepfitError as err:
        print(f"error: {err}", file=sys.stderr)  # noqa: T201
        return 2
    if ns.command != "serve":
        # prometheus_client keeps a process's metrics in this directory when the variable is set as it is imported:
        # a command run beside a server with several workers (the variable exported for it) added its own timings
        # to the server's /metrics, which adds up every file there (keepfit serve sets it for its workers)
        for name in PROMETHEUS_MULTIPROC_ENV:
            os.environ.pop(name, None)
    try:
        func = _resolve(table[ns.command][0])
    except ModuleNotFoundError as err:
        print(f"error: `keepfit {ns.command}` needs {err.name!r}; install the matching extra (see README)",  # noqa: T201
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while a command's modules (torch: a second or two) are imported
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130
    return run_command(func, argv[1:])


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` (``--flag VALUE`` or ``--flag=VALUE``; the last one wins), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


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

    from model.artifact import load_artifact, replace_knowledge
    from model.files import atomic_write_json
    from model.knowledge import build_knowledge

    p = argparse.ArgumentParser(prog="keepfit knowledge", description="Build knowledge.json.")
    p.add_argument("--dictionary", required=True, type=Path, help="FLAIR knowledge_dictionary.json")
    p.add_argument("--aliases", type=Path, default=None, help="aliases file (default model/data/aliases.json)")
    p.add_argument("--out", required=True, type=Path, help="output knowledge.json")
    p.add_argument("--artifact", action="append", type=Path, default=[], metavar="DIR",
                   help="also give this artifact the new knowledge (new hashes and version; repeatable)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    for flag, source in (("--dictionary", args.dictionary), ("--aliases", args.aliases)):
        if source is not None and source.resolve() == out:  # the FLAIR dictionary was replaced by its output
            raise KeepfitError(f"--out {args.out} is the {flag} file it is built from (nothing was changed)")
    # an artifact's sealed knowledge.json overwritten: every later load refused the artifact as corrupted
    inside = [a for a in args.artifact if a.resolve() in out.parents]
    inside = inside or ([out.parent] if _artifact_lists(out) else [])
    if inside:
        raise KeepfitError(f"--out {args.out} is inside the artifact {inside[0]}: give the artifact new knowledge "
                           f"with --artifact {inside[0]} and --out outside it (nothing was changed)")
    data = build_knowledge(args.dictionary, args.aliases) if args.aliases else build_knowledge(args.dictionary)
    for artifact in args.artifact:  # every artifact checked before anything is written, its folder writable too
        load_artifact(artifact)
        if not os.access(artifact, os.W_OK | os.X_OK) or not os.access(artifact / "manifest.json", os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied (nothing was changed)", str(artifact))
    if args.out.is_dir():
        raise IsADirectoryError(errno.EISDIR, "--out is a directory, not a file (nothing was changed)", str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, data)
    n_aliases = sum(len(v) for c in data["categories"].values() for v in c.get("aliases", {}).values())
    logger.info("wrote %s: %d categories, %d aliases, %d bytes", args.out, len(data["categories"]), n_aliases,
                len(json.dumps(data)))
    for artifact in args.artifact:
        version = replace_knowledge(artifact, data)
        print(f"{artifact}: knowledge replaced, version {version}")  # noqa: T201
    return 0


def _artifact_lists(path: os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that the artifact manifest beside it lists (its hash sealed there)."""
    import json
    from pathlib import Path

    from model.artifact import ARTIFACT_FORMAT, MANIFEST

    try:
        manifest = json.loads((Path(path).parent / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return manifest.get("format") == ARTIFACT_FORMAT and isinstance(files, dict) and Path(path).name in files


def info_main(argv: list[str]) -> int:
    import json
    from pathlib import Path

    from model.artifact import load_artifact

    p = argparse.ArgumentParser(
        prog="keepfit info",
        description="Verify an artifact (the SHA-256 of every file against its manifest) and summarise it.",
    )
    p.add_argument("artifact", type=Path, help="artifact directory, e.g. artifacts/keepfit-v2-small")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON (files by size)")
    args = p.parse_args(argv)
    art = load_artifact(args.artifact)  # refuses a missing file or a hash mismatch, naming the file
    summary = {k: art.manifest.get(k) for k in ("name", "version", "created", "quantization", "parity", "evaluation")}
    # "bytes" is descriptive (a manifest sealed without it verifies): the file's size on disk then
    summary["files"] = {n: m.get("bytes", art.file(n).stat().st_size) for n, m in art.manifest["files"].items()}
    if args.json:  # everything the manifest says (training data, config, preprocessing...), files by size
        print(json.dumps({**art.manifest, **summary, "verified": "sha256"}, indent=2))  # noqa: T201
    else:
        print(info_text(args.artifact, summary))  # noqa: T201
    return 0


def artifact_main(argv: list[str]) -> int:
    from pathlib import Path

    from model.artifact import seal_artifact

    p = argparse.ArgumentParser(prog="keepfit artifact", description="Maintain artifact directories.")
    sub = p.add_subparsers(dest="action", required=True)
    seal = sub.add_parser(
        "seal",
        help="check every file's hash, derive the version from the content and write the manifest's checksum",
        description="Re-seal manifest.json after a deliberate edit (or an export by an older keepfit): the files "
        "are verified, the version is derived again from everything that changes an answer, and the content "
        "checksum is written. Indexes built with another version must then be rebuilt.",
    )
    seal.add_argument("artifact", type=Path)
    typical = sub.add_parser(
        "typicality",
        help="fit the check that warns of images unlike any the model was trained on (unrecognised_image)",
        description="Fit the modality head's typicality again on the training images the artifact's manifest "
        "names (its public manifests' and elite manifest's train splits, under --data-root), through the "
        "artifact's own image encoder, keeping the head's weights. For artifacts exported before the check "
        "existed. The version changes: `keepfit index adopt` indexes made with the old one (nothing is embedded "
        "again).",
    )
    typical.add_argument("artifact", type=Path)
    typical.add_argument("--data-root", type=Path, default=None,
                         help="the folder the manifests' paths are relative to (default: ../shared/data)")
    args = p.parse_args(argv)
    if args.action == "typicality":
        from model.modality_head import add_typicality

        root = args.data_root if args.data_root is not None else Path("..") / "shared" / "data"
        if not root.is_dir():
            p.error(f"--data-root {root} is not a directory: pass the folder the training manifests are in")
        old, new, fitted = add_typicality(args.artifact, root)
        print(f"{args.artifact}: typicality fitted on {fitted}; version {old} -> {new} "  # noqa: T201
              f"(keepfit index adopt indexes made with {old}: nothing is embedded again)")
        return 0
    old, new = seal_artifact(args.artifact)
    if old == new:
        print(f"{args.artifact}: sealed, version {new}")  # noqa: T201
    else:
        print(f"{args.artifact}: sealed, version {old} -> {new} (rebuild indexes made with {old})")  # noqa: T201
    return 0
def _quantization(mode: object) -> str:
    """The weights' form, as a reader says it: an export without quantisation records "none"."""
    return "fp32" if mode in (None, "", "none") else str(mode)


def info_text(path: object, summary: dict[str, object]) -> str:
    """A short human summary of an artifact's manifest (``keepfit info`` without ``--json``)."""
    files: dict[str, int] = summary["files"]  # type: ignore[assignment]
    total = sum(files.values())
    lines = [
        f"{summary['name']} {summary['version']} ({_quantization(summary.get('quantization'))}), created "
        f"{summary['created']}",
        f"  {path}: {len(files)} files, {total / 2**20:.1f} MiB, SHA-256 of every file verified",
    ]
    parity = summary.get("parity") or {}
    if isinstance(parity, dict):
        for kind, entry in parity.items():  # fp32, then the quantisation's own (int8, int8-conv)
            if isinstance(entry, dict) and "image" in entry and "text" in entry:
                lines.append(
                    f"  ONNX vs torch ({kind}): image min cosine {entry['image']['min_cosine']:.5f}, "
                    f"text min cosine {entry['text']['min_cosine']:.5f}"
                )
    evaluation = summary.get("evaluation") or {}
    if isinstance(evaluation, dict) and evaluation.get("zero_shot_mean") is not None:
        line = f"  {evaluation.get('split', 'test')} split: zero-shot mean balanced accuracy {evaluation['zero_shot_mean']:.3f}"
        if evaluation.get("retrieval_p@10_mean") is not None:
            line += f", text->image P@10 {evaluation['retrieval_p@10_mean']:.3f}"
        measured = evaluation.get("artifact_version")
        if measured and measured != summary.get("version"):  # its knowledge or modality head was replaced since
            line += f" (measured on version {measured})"
        lines.append(line)
    lines.append("  (--json for the full summary)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
