"""``keepfit train text|hybrid`` and ``keepfit eval zero-shot|retrieval|few-shot|linear-probe|suite|unseen-site|synonyms``.

Training resolves its config from the defaults, an optional ``--config-file`` JSON and the flags (in that
order), writes it into the run folder (``runs/<name>`` by default) and into every checkpoint.  Evaluation runs
on an exported artifact through ONNX Runtime and writes ``report.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import finite_float, positive_int
from model.config import MODALITIES
from model.cores import available_cores, threads_from_env
from model.errors import ConfigError, DataError
from model.files import staged_folder
from model.knowledge import Knowledge

if TYPE_CHECKING:
    from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)

STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"name": "keepfit-text", "steps": 300, "batch_size": 32, "eval_every": 50},
    "hybrid": {},
}


# ================================================================================================= train
# TrainConfig fields whose flags are parsed differently (--public and --holdout repeat, --losses names terms,
# --no-site-augment, --cast and --letterbox set the augmentation): resolve_train_config applies them by hand
_FLAGS_WITH_OWN_MEANING = frozenset({"stage", "public", "holdout", "losses", "augment"})
_FINITE = finite_float()  # nan and inf are refused as flags; TrainConfig.validate checks the ranges
_NUMBER_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": _FINITE, "int | None": int, "float | None": _FINITE}


def _numeric_fields() -> list[tuple[str, Callable[[str], Any]]]:
    """``(field, int | float)`` of every numeric TrainConfig field: each is a flag of the same name."""
    from training.config import TrainConfig

    return [(f.name, _NUMBER_TYPES[str(f.type)]) for f in dataclasses.fields(TrainConfig)
            if str(f.type) in _NUMBER_TYPES]


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keepfit train",
        description="Stage 1 (`text`): textual pretraining of the text encoder. Stage 2 (`hybrid`): hybrid "
        "image-text knowledge injection. Flags override --config-file, which overrides the defaults.",
    )
    p.add_argument("stage", choices=("text", "hybrid"))
    p.add_argument("--name", help="run name; the run folder is <runs-dir>/<name>")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--out", type=Path, help="run folder (overrides --runs-dir/--name)")
    p.add_argument("--config-file", type=Path, help="a JSON training config (see runs/<name>/config.json)")
    p.add_argument("--model", help="model config name or JSON path (default keepfit-v2-small)")
    p.add_argument("--data-root", help="folder with cfp_oct_mx/, ffa_huapu4/, text/ (default ../shared/data)")
    p.add_argument("--init", help="stage 2: stage-1 checkpoint whose text encoder to start from")
    p.add_argument("--corpus", help="stage 1: JSONL text corpus (default <data-root>/text/ophthalmic_corpus.jsonl)")
    p.add_argument("--knowledge", metavar="FILE",
                   help="knowledge.json (built by keepfit knowledge, e.g. with a clinic's categories) whose expert "
                   "descriptions word the captions, prompts and knowledge pairs (default: the packaged "
                   "model/data/knowledge.json); recorded in the checkpoints, and export ships it")
    p.add_argument("--elite", "--elite-manifest", dest="elite_manifest",
                   help="elite manifest CSV (path, caption[, modality, labels, split]), absolute or relative to "
                   "the data root (default mm_retinal_cfp_pairs/pairs.csv: real MM-Retinal atlas pairs); 'none': "
                   "compose every elite pair from the train split")
    p.add_argument("--no-elite-compose", dest="elite_compose_missing", action="store_false", default=None,
                   help="do not compose elite pairs for the modalities the elite manifest lacks")
    p.add_argument("--no-site-augment", action="store_true",
                   help="switch off the camera / site augmentation (colour gain, gamma, vignetting, blur, cast, "
                   "letterbox); --cast or --letterbox given beside it still apply")
    p.add_argument("--cast", type=_FINITE, metavar="A",
                   help="camera colour cast: per-channel gain exp(u), u drawn from [-A, A] (0-1.5; default 0: off)")
    p.add_argument("--letterbox", type=_FINITE, metavar="P",
                   help="probability that a view keeps only a central band of 60-100 %% of its height or width, "
                   "the rest padded, as a wide camera sensor frames the fundus (0-1; default 0: off)")
    p.add_argument("--elite-text", choices=("composed", "atlas"),
                   help="text of the elite pairs composed from the train split: labels + expert descriptions "
                   "(composed) or an MM-Retinal atlas caption of the same condition (atlas)")
    p.add_argument("--public", action="append", metavar="MANIFEST:COLS",
                   help="public source relative to the data root, e.g. cfp_oct_mx/labels.csv:dme,dr (repeatable)")
    p.add_argument("--holdout", action="append", metavar="CATEGORY",
                   help="leave every image carrying this category out of training (repeatable)")
    p.add_argument("--no-drop-held-out-copies", "--keep-held-out-copies", dest="drop_held_out_copies",
                   action="store_false", default=None,
                   help="train also on train images that are re-encoded copies of a val or test image of the public "
                   "manifests (dropped by default; as models trained before that check were)")
    p.add_argument("--losses", help="stage-2 terms to use: any of public,elite,kt,gen (default all)")
    p.add_argument("--weight", action="append", metavar="TERM=W", help="override a loss weight, e.g. gen=0.5")
    for name, typ in _numeric_fields():  # --steps, --lr, --seed, ...: one flag per number in TrainConfig
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, metavar=typ.__name__.upper())
    p.add_argument("--kt-same-modality", action="store_true", default=None,
                   help="knowledge transfer: public images attend only to elite pairs of their own modality")
    p.add_argument("--select", choices=("last", "best"), help="weights in model.pt: end of schedule (default) or "
                   "best validation score")
    p.add_argument("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no autocast on CUDA")
    p.add_argument("--cache-dir", help="feature cache folder (default: .cache beside the run's folder, runs/.cache)")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    return p


def resolve_train_config(args: argparse.Namespace) -> Any:
    from training.config import STAGE_LOSSES, LossWeights, TrainConfig, load_config_file

    data: dict[str, Any] = {"stage": args.stage, **STAGE_DEFAULTS[args.stage]}
    if args.config_file:
        data.update(load_config_file(args.config_file))
        if data.get("stage", args.stage) != args.stage:
            raise ConfigError(f"{args.config_file} is a {data['stage']!r} config, not {args.stage!r}")
    cfg = TrainConfig.from_dict(data)
    changes: dict[str, Any] = {}
    for key in (f.name for f in dataclasses.fields(TrainConfig) if f.name not in _FLAGS_WITH_OWN_MEANING):
        value = getattr(args, key, None)  # a flag of the same name, when given
        if value is not None:
            changes[key] = value
    if changes.get("elite_manifest", "").lower() == "none":
        changes["elite_manifest"] = None
    augment = cfg.augment
    if args.no_site_augment:
        augment = dataclasses.replace(augment, color=0.0, gamma=0.0, vignette=0.0, blur=0.0, cast=0.0, letterbox=0.0)
    if args.cast is not None:
        augment = dataclasses.replace(augment, cast=args.cast)
    if args.letterbox is not None:
        augment = dataclasses.replace(augment, letterbox=args.letterbox)
    if augment != cfg.augment:
        changes["augment"] = augment
    if args.public:
        changes["public"] = tuple(args.public)
    if args.holdout:
        changes["holdout"] = tuple(args.holdout)
    weights = cfg.losses.__dict__.copy()
    if args.losses is not None:
        chosen = {x.strip() for x in args.losses.split(",") if x.strip()}
        stage_terms = set(STAGE_LOSSES[args.stage])
        unknown = chosen - stage_terms
        if unknown:
            raise ConfigError(f"unknown loss term(s) {sorted(unknown)} for stage {args.stage}; "
                              f"choose from {', '.join(sorted(stage_terms))}")
        for term in stage_terms - chosen:
            weights[term] = 0.0
    for item in args.weight or []:
        term, _, value = item.partition("=")
        if term not in weights or not value:
            raise ConfigError(f"--weight {item!r}: expected TERM=W with TERM one of {', '.join(weights)}")
        try:
            weights[term] = float(value)
        except ValueError as err:
            raise ConfigError(f"--weight {item!r}: {value!r} is not a number") from err
    changes["losses"] = LossWeights(**weights)
    return cfg.replace(**changes)


def check_input_paths(cfg: Any, data_root: Path | None = None) -> None:
    """Every file the run will read, checked up front; :class:`DataError` names the flag and the path.  The
    elite manifest (stage 2 only) may be given relative to the data root."""
    from training.data import resolve_elite_manifest

    elite = cfg.elite_manifest if cfg.stage == "hybrid" and cfg.elite_manifest else None
    checks = (("--init", cfg.init), ("--corpus", cfg.corpus), ("--knowledge", cfg.knowledge),
              ("--elite-manifest", str(resolve_elite_manifest(elite, data_root)) if elite else None))
    for flag, value in checks:
        if value and not Path(value).is_file():
            what = "checkpoint" if flag == "--init" else "file"
            raise DataError(f"{what} not found: {value} ({flag})")
    if cfg.stage == "hybrid" and data_root is not None:
        from training.data import PublicSource

        for spec in cfg.public:  # read as public_samples reads it: under the data root unless absolute
            manifest = data_root / PublicSource.parse(spec).manifest
            if not manifest.is_file():
                raise DataError(
                    f"file not found: {manifest} (--public {spec}: a relative manifest is read under --data-root "
                    f"{data_root}; give an absolute path for one elsewhere)"
                )


# what a run writes into its folder (training/loop.py, training/tasks.py, _write_training_report)
RUN_OUTPUTS = ("last.pt", "best.pt", "model.pt", "config.json", "history.jsonl", "curves.png", "elite.csv",
               "training_report.json", "training_report.md")


def check_outputs_spare_inputs(cfg: Any, run_dir: Path, data_root: Path | None = None,
                               folder_flag: str = "--out") -> None:
    """Refuse a run folder whose outputs would replace a file the run reads: ``--init runs/a/model.pt --out
    runs/a`` trained from that checkpoint and wrote its own model.pt over it.  ``folder_flag``: the flag that
    chose the folder (``--out`` or ``--name``), which the message names."""
    from training.data import resolve_elite_manifest

    elite = cfg.elite_manifest if cfg.stage == "hybrid" and cfg.elite_manifest else None
    outputs = {(run_dir / name).resolve() for name in RUN_OUTPUTS}
    for flag, value in (("--init", cfg.init), ("--corpus", cfg.corpus), ("--knowledge", cfg.knowledge),
                        ("--elite-manifest", resolve_elite_manifest(elite, data_root) if elite else None)):
        if value and Path(value).resolve() in outputs:
            raise ConfigError(f"{flag} {value} is inside the run folder {run_dir}, where this run writes "
                              f"{Path(value).name}: choose another {folder_flag}")


def choose_knowledge(path: str | None) -> tuple[Knowledge, dict[str, Any]]:
    """The knowledge a run trains with (``--knowledge FILE``, else the packaged one), read and checked before any
    weights load, and its record for the checkpoints: ``path``, ``packaged``, ``sha256`` of the file's bytes and,
    for a file of the user's, its ``content`` (bytes), which ``keepfit export`` of the checkpoint ships.  A missing,
    unreadable or malformed file is a :class:`DataError` of one line naming ``--knowledge``."""
    from model.errors import ArtifactError
    from model.knowledge import DEFAULT_FILE

    file = Path(path) if path else DEFAULT_FILE
    flag = " (--knowledge)" if path else ""
    try:
        content = file.read_bytes()
    except FileNotFoundError:
        raise DataError(f"knowledge file not found: {file}{flag}") from None
    except OSError as err:
        raise DataError(f"cannot read knowledge file {file}: {err.strerror or err}{flag}") from None
    try:
        knowledge = Knowledge.from_bytes(content, f"knowledge file {file}", str(file))
        _check_knowledge_structure(knowledge, file)
    except ArtifactError as err:
        raise DataError(f"{err}{flag}") from None
    record: dict[str, Any] = {"path": str(file), "packaged": path is None, "sha256": knowledge.sha256}
    if path:
        record["content"] = content
    return knowledge, record


def _check_knowledge_structure(knowledge: Knowledge, file: Path) -> None:
    """What training reads of a knowledge file, so that a hand-edited one fails now, not minutes into a run."""
    from model.errors import ArtifactError

    data = knowledge.data
    for section in ("templates", "categories", "category_sets", "modality_prompts"):
        if not isinstance(data[section], dict) or not data[section]:
            raise ArtifactError(f"knowledge file {file}: {section!r} must be a non-empty JSON object")
    for modality, template in data["templates"].items():
        if not isinstance(template, str) or "{}" not in template:
            raise ArtifactError(f"knowledge file {file}: the {modality} template must be a string with {{}}")
    for name, entry in data["categories"].items():
        descriptions = entry.get("descriptions") if isinstance(entry, dict) else None
        if not isinstance(descriptions, dict) or not all(
                isinstance(v, list) and all(isinstance(d, str) for d in v) for v in descriptions.values()):
            raise ArtifactError(f"knowledge file {file}: category {name!r} needs 'descriptions' mapping modalities "
                                "to lists of texts")
    for modality in data["category_sets"]:
        if modality not in data["templates"]:
            raise ArtifactError(f"knowledge file {file}: modality {modality!r} has a category set but no template")
    from model.runtime import check_category_sets  # what every runtime of its artifact will check

    check_category_sets(knowledge, f"knowledge file {file}")


def check_knowledge_of_init(cfg: Any, record: dict[str, Any]) -> None:
    """Warn when stage 2 starts from a stage-1 checkpoint trained with other knowledge than this run's."""
    if not cfg.init:
        return
    from model.nn.factory import read_checkpoint

    # only its knowledge record: the weights mapped, not read (build_model reads them once)
    theirs = read_checkpoint(cfg.init, mmap=True).get("knowledge")
    if isinstance(theirs, dict) and theirs.get("sha256") != record["sha256"]:
        logger.warning("--init %s was trained with the knowledge %s, this run trains with %s%s", cfg.init,
                       theirs.get("path"), record["path"],
                       "" if cfg.knowledge else " (pass the same --knowledge to keep them alike)")


def resume_hint(argv: list[str], run_dir: Path) -> str:
    """What an interrupted run prints: how to continue it (``--resume`` and the same flags) or, before its first
    checkpoint, that the same command starts it over."""
    import shlex

    command = ["keepfit", "train", *argv]
    if (run_dir / "last.pt").is_file():
        again = command if "--resume" in argv else [*command, "--resume"]
        return (f"interrupted: --resume continues from {run_dir / 'last.pt'} (its last checkpoint) with the same "
                f"flags: {shlex.join(again)}")
    return (f"interrupted before the first checkpoint in {run_dir}: nothing to resume; the same command starts "
            f"over: {shlex.join(command)}")


def train_main(argv: list[str]) -> int:
    import torch

    from training.data import resolve_data_root
    from training.loop import Task, check_resumable, resolve_device, seed_everything, train
    from training.tasks import TASKS, build_model

    args = _train_parser().parse_args(argv)
    cfg = resolve_train_config(args)
    try:
        data_root: Path | None = resolve_data_root(cfg.data_root)
    except DataError:
        if cfg.stage == "hybrid" or not cfg.corpus:
            raise
        data_root = None
    check_input_paths(cfg, data_root)  # before any weights load: a typo costs a second, not a minute
    knowledge, knowledge_record = choose_knowledge(cfg.knowledge)
    for category in cfg.holdout:  # a misspelt one matched no image, and the run trained on the category
        if not knowledge.is_known(category):
            near = knowledge.similar_known(category)
            raise ConfigError(f"--holdout {category!r} is no known category, so nothing would be held out"
                              + (f"; did you mean {' or '.join(map(repr, near))}?" if near else ""))
    run_dir = args.out or (args.runs_dir / cfg.name)
    folder_flag = "--out" if args.out else "--name"
    check_outputs_spare_inputs(cfg, run_dir, data_root, folder_flag)
    # a refused resume before any weights load or file is written
    resumed = check_resumable(run_dir, cfg, args.resume, knowledge=knowledge_record, folder_flag=folder_flag)
    check_knowledge_of_init(cfg, knowledge_record)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        # torch's default counts the machine's cores, also in a container allowed fewer (model/cores.py)
        default = min(torch.get_num_threads(), available_cores())
        torch.set_num_threads(threads_from_env() or max(1, default))
    seed_everything(cfg.seed)  # the new heads' random initialisation is part of the run's seed
    meta: dict[str, Any] = {"knowledge": knowledge_record, "provenance": _provenance(argv, cfg, data_root, resumed)}
    try:
        model, tokenizer, info = build_model(cfg)
        if info:
            meta["init_from"] = info
        model.to(device)
        task: Task = TASKS[cfg.stage](cfg, model, tokenizer, device, knowledge, data_root, run_dir)
        result = train(task, cfg, run_dir, device, resume=args.resume, meta=meta)
    except KeyboardInterrupt:  # Ctrl-C: say how to go on (keepfit's entry point prints the message, exit 130)
        raise KeyboardInterrupt(resume_hint(argv, run_dir)) from None
    _write_training_report(cfg, task, result, knowledge_record, meta["provenance"])
    speed = (f"{result.pairs_per_s:.1f} pairs/s" if math.isfinite(result.pairs_per_s)
             else "speed not measured: the first step is not timed")
    print(f"wrote {result.checkpoint} (weights of step {result.selected_step}; best validation score "  # noqa: T201
          f"{result.best_score:.4f} at step {result.best_step}; {speed} on {device})")
    if cfg.stage == "hybrid":
        # into the run's own folder: never over the committed default artifact
        print(f"export: keepfit export --checkpoint {result.checkpoint} --out {result.run_dir / 'artifact'} "  # noqa: T201
              "--quantize int8")
    return 0


def _provenance(argv: list[str], cfg: Any, data_root: Path | None, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """This process's record (:mod:`training.provenance`); a resumed run keeps those of the processes before it
    (``earlier``), which may have run other code or versions."""
    from training.provenance import run_provenance

    record = run_provenance(argv, cfg, data_root)
    before = (resumed or {}).get("provenance")
    if isinstance(before, dict):
        record["earlier"] = [*before.get("earlier", []), {k: v for k, v in before.items() if k != "earlier"}]
    return record


def _write_training_report(cfg: Any, task: Any, result: Any, knowledge: dict[str, Any] | None = None,
                           provenance: dict[str, Any] | None = None) -> None:
    from training.reports import dumps, fmt, write_report

    evals = [h for h in result.history if h.get("kind") == "eval"]
    trains = [h for h in result.history if h.get("kind") == "train"]
    used = {k: v for k, v in (knowledge or {}).items() if k != "content"}  # which knowledge: path and SHA-256
    payload = {"name": cfg.name, "stage": cfg.stage, "config": cfg.to_dict(), "knowledge": used, "data": task.stats,
               "selected_step": result.selected_step, "best_step": result.best_step, "best_score": result.best_score,
               "pairs_per_s": result.pairs_per_s,
               "steps": len(trains), "train_seconds": sum(h["time"] for h in trains), "validation": evals,
               "checkpoint": str(result.checkpoint), "provenance": provenance}
    keys = [k for k in (evals[-1] if evals else {}) if k not in ("kind", "step", "time")]
    lines = [f"# Training run `{cfg.name}` (stage {cfg.stage})", "",
             f"- checkpoint: `{result.checkpoint}` (weights of step {result.selected_step}, select={cfg.select}; best "
             f"validation score {fmt(result.best_score)} at step {result.best_step})",
             f"- throughput: {fmt(result.pairs_per_s, 1)} image-text pairs (or texts) per second, "
             f"{payload['train_seconds'] / 60:.1f} min of training steps",
             *([f"- knowledge: `{used['path']}`{' (packaged)' if used.get('packaged') else ''}, SHA-256 "
                f"`{used['sha256']}`"] if used else []),
             *_provenance_lines(provenance),
             "", "## Validation", "", "| step | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {h['step']} | " + " | ".join(fmt(h.get(k)) for k in keys) + " |" for h in evals]
    lines += ["", "![training curves](curves.png)", "", "## Data", "", "```json", dumps(task.stats), "```", "",
              "## Config", "", "```json", dumps(cfg.to_dict()), "```", ""]
    write_report(result.run_dir, payload, "\n".join(lines), stem="training_report")


def _provenance_lines(provenance: dict[str, Any] | None) -> list[str]:
    if not provenance:
        return []
    import shlex

    dirty, commit = provenance.get("git_dirty"), provenance.get("git_commit")
    versions = ", ".join(f"{k} {v}" for k, v in (provenance.get("versions") or {}).items() if v)
    code = (f"git `{commit}`" + (" with uncommitted changes" if dirty else "" if dirty is False else " (state unknown)")
            if commit else "no git commit (not run from a git checkout, or git not installed)")
    return [f"- code: {code}"
            + (f"; resumed {len(provenance['earlier'])} time(s)" if provenance.get("earlier") else ""),
            f"- command: `{shlex.join(provenance.get('command') or [])}`",
            f"- versions: {versions}; {provenance.get('torch_threads')} torch threads",
            *[f"- input `{name}`: SHA-256 `{item['sha256']}`" for name, item in (provenance.get("inputs") or {}).items()]]


# ================================================================================================== eval
def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keepfit eval", description="Evaluate an exported artifact (ONNX Runtime).")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, labelled: bool = True) -> None:
        sp.add_argument("--artifact", required=True, type=Path)
        sp.add_argument("--out", type=Path, help="report folder (default runs/eval/<artifact>-<version>/<command>)")
        sp.add_argument("--json", action="store_true", help="print the JSON report instead of a summary")
        sp.add_argument("--batch-size", type=positive_int, default=32)
        if labelled:
            sp.add_argument("--manifest", required=True, type=Path, help="CSV with path (relative to the CSV) "
                            "and label columns")
            sp.add_argument("--label-column", required=True)
            sp.add_argument("--categories", help="comma-separated class names (default: the labels present)")
            sp.add_argument("--modality", choices=MODALITIES, help="prompt template; also filters rows "
                            "when the manifest has a modality column")
            sp.add_argument("--split", default="test", help="rows of this split (default %(default)s; all rows "
                            "if no split column)")
            sp.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="keep matching rows")
            sp.add_argument("--require", action="append", default=[], metavar="COL",
                            help="keep rows where COL is non-empty (e.g. --require dr: graded rows)")

    zs = sub.add_parser("zero-shot", help="zero-shot classification through expert-description prompts")
    common(zs)
    zs.add_argument("--decision", choices=("auto", "screening", "flat"), default="auto",
                    help="as /v1/classify's: auto (default) and screening screen a set with normal and at least "
                    "two other classes, none a healthy or absent finding ('no ...', 'normal ...', 'negative for "
                    "...'); elsewhere, and with flat, one softmax (the report's 'decision' says which)")
    r = sub.add_parser("retrieval", help="text-to-image retrieval: precision@k of the queried category")
    common(r)
    r.add_argument("--k", default="1,5,10")
    f = sub.add_parser("few-shot", help="nearest-prototype classification from k train images per class")
    common(f)
    f.add_argument("--shots", default="1,5,10")
    f.add_argument("--repeats", type=positive_int, default=10)
    f.add_argument("--train-split", default="train")
    lp = sub.add_parser("linear-probe", help="logistic regression on frozen embeddings (C chosen on val)")
    common(lp)
    lp.add_argument("--train-split", default="train")
    lp.add_argument("--val-split", default="val")
    s = sub.add_parser("suite", help="every standard task on ../shared/data: the README table")
    common(s, labelled=False)
    s.add_argument("--data-root", help="default ../shared/data")
    s.add_argument("--split", default="test", help="the split to evaluate (default %(default)s)")
    s.add_argument("--record-into", type=Path, metavar="CKPT",
                   help="store the summary in this checkpoint's `evaluation` (export copies it into the manifest)")
    s.add_argument("--run", type=Path, help="training run folder whose curves to include in the report")
    s.add_argument("--baseline", type=Path, metavar="ARTIFACT",
                   help="also evaluate this artifact (e.g. the previous default) and print both in one table")
    u = sub.add_parser("unseen-site", help="the second site's four tasks zero-shot over several splits together "
                       "(default train+test: every photograph no model here trained on or was chosen with)")
    common(u, labelled=False)
    u.add_argument("--data-root", help="default ../shared/data")
    u.add_argument("--splits", default="train,test", help="comma-separated splits (default %(default)s: its val "
                   "split chose the recipes)")
    u.add_argument("--baseline", type=Path, metavar="ARTIFACT", help="also evaluate this artifact, one row each")
    cal = sub.add_parser("calibrate", help="fit per-category logit offsets on the training sites' val splits "
                         "(calibration.json; --record-into puts it in a checkpoint for the next export)")
    common(cal, labelled=False)
    cal.add_argument("--data-root", help="default ../shared/data")
    cal.add_argument("--split", default="val", help="the split to fit on (default %(default)s; never test)")
    cal.add_argument("--l2", type=finite_float(0.0), default=0.1, help="L2 penalty on the offsets")
    cal.add_argument("--record-into", type=Path, metavar="CKPT",
                     help="store calibration.json in this checkpoint's artifact files (export ships it)")
    sy = sub.add_parser("synonyms", help="every wording (name, aliases) of every class per test task: balanced "
                        "accuracy, spread, worst wording; synonym vs non-synonym text-embedding cosines")
    common(sy, labelled=False)
    sy.add_argument("--data-root", help="default ../shared/data")
    sy.add_argument("--split", default="test", help="the split to evaluate (default %(default)s)")
    sy.add_argument("--task", action="append", metavar="NAME", help="only this task (repeatable)")
    c = sub.add_parser("compare", help="a Markdown table of several suite reports (the ablation table)")
    c.add_argument("reports", nargs="+", metavar="NAME=REPORT_JSON[,REPORT_JSON]",
                   help="e.g. clip=runs/abl-clip/eval/report.json; several reports per name are averaged (seeds)")
    return p


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from err
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{flag} must list integers >= 1, got {text!r}")
    return values


def _where(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        col, sep, value = item.partition("=")
        if not sep or not col:
            raise ConfigError(f"--where {item!r}: expected COLUMN=VALUE")
        out.append((col, value))
    return out


def _read_reports(items: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``NAME=report.json[,report.json...]`` (several runs of one model, e.g. seeds) or a bare path."""
    import json

    from training.evalcmd import comparison_markdown

    out = []
    splits: dict[str, Any] = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep:
            name, paths = Path(item).parent.parent.name, item
        reports = []
        for path in paths.split(","):
            try:
                report = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:  # ValueError: not JSON, or not text at all (a PNG beside it)
                raise DataError(f"cannot read suite report {path}: {err}") from err
            if not isinstance(report, dict) or report.get("command") != "suite" or not isinstance(
                    report.get("summary"), dict):
                raise DataError(f"{path} is not a `keepfit eval suite` report")
            try:  # a report of an older keepfit (or an edited one) lacks a value: name the file, no traceback
                comparison_markdown([(name, [report])])
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise DataError(f"cannot compare suite report {path}: it lacks or garbles {err} (an older "
                                "keepfit's report? run `keepfit eval suite` again)") from err
            reports.append(report)
            splits[path] = report["summary"].get("split")
        out.append((name, reports))
    if len(set(splits.values())) > 1:  # one table, one split: numbers of a val and a test split were averaged
        raise DataError("the suite reports are of different splits: " + ", ".join(
            f"{path} ({split})" for path, split in splits.items()) + "; compare reports of one split")
    return out


def _check_same_training(training: Any, payload: dict[str, Any], artifact: Path, checkpoint: Path) -> None:
    """Refuse to record what was measured on ``artifact`` into a checkpoint it was not exported from, as far as
    their training provenance tells (the keys export copies into the manifest): the next export of that
    checkpoint would ship another model's evaluation or calibration offsets."""
    import json

    from model.nn.commands import TRAINING_PROVENANCE

    trained = payload.get("train_config")
    if not isinstance(training, dict) or not isinstance(trained, dict):
        return  # a fresh or imported model: nothing to compare
    ours = json.loads(json.dumps({k: trained[k] for k in TRAINING_PROVENANCE if k in trained}))
    differs = sorted(k for k in set(ours) & set(training) if ours[k] != training[k])  # keys of both: older exports
    if differs:
        raise DataError(f"{artifact} was not exported from {checkpoint} (--record-into): their training differs "
                        f"in {', '.join(differs)}")


def eval_main(argv: list[str]) -> int:
    from model.runtime import KeepfitRuntime
    from training import evalcmd

    args = _eval_parser().parse_args(argv)
    if args.command == "compare":
        rows = _read_reports(args.reports)
        print(evalcmd.comparison_markdown(rows), end="")  # noqa: T201
        return 0
    # what would fail at the end, checked before the evaluation's minutes
    record_into = getattr(args, "record_into", None)
    if record_into and not Path(record_into).is_file():
        raise DataError(f"checkpoint not found: {record_into} (--record-into)")
    if record_into:  # a file that is no keepfit checkpoint, or one that cannot be replaced: refused after the run
        import errno
        import os

        from model.nn.factory import read_checkpoint

        recorded_into = read_checkpoint(record_into)
        if not os.access(Path(record_into).parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied (--record-into; nothing was evaluated)",
                                  str(record_into))
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise DataError(f"--out {args.out} is a file; reports are written into a folder")
    run = getattr(args, "run", None)
    if run is not None and not (run / "history.jsonl").is_file():  # a typo left the curves out without a word
        raise DataError(f"--run {run} is not a training run folder: it has no history.jsonl")
    for flag in ("artifact", "baseline"):  # `calibrate --out <artifact>` wrote over its sealed calibration.json
        artifact = getattr(args, flag, None)
        if args.out is not None and artifact is not None and args.out.resolve().is_relative_to(artifact.resolve()):
            raise DataError(f"--out {args.out} is inside the artifact {artifact} (--{flag}): an artifact holds "
                            "only its sealed files; choose another --out")
    runtime = KeepfitRuntime.from_artifact(args.artifact, intra_op_threads=threads_from_env())
    if record_into:
        _check_same_training(runtime.artifact.manifest.get("training"), recorded_into, args.artifact, record_into)
    out = args.out or Path("runs") / "eval" / f"{runtime.artifact.name}-{runtime.version}" / args.command
    # written into a stage beside --out and published only when the command succeeds: Ctrl-C in the middle left
    # the new run's first figures beside the previous run's report
    with staged_folder(out, f"keepfit eval {args.command}") as stage:
        report = _evaluate(args, runtime, stage)
    if args.command in ("suite", "unseen-site") and args.baseline is None:
        evalcmd.forget_comparison(out)  # this run's report, with no comparison of an earlier run beside it
    if record_into and args.command == "calibrate":  # once its report is there
        from training.calibrate import record_calibration

        record_calibration(record_into, report["calibration"])
    elif record_into:
        evalcmd.record_into_checkpoint(record_into, report["summary"])
    text = report.pop("text")
    if args.json:
        from training.reports import dumps

        print(dumps(report))  # noqa: T201
    else:
        print(text)  # noqa: T201
        print(f"\nreport: {out / 'report.md'}")  # noqa: T201
    return 0


def _evaluate(args: argparse.Namespace, runtime: KeepfitRuntime, out: Path) -> dict[str, Any]:
    """Run the evaluation ``args.command`` names, writing its files into ``out``; its report."""
    from model.runtime import KeepfitRuntime
    from training import evalcmd

    if args.command == "calibrate":
        from training.calibrate import run_calibrate
        from training.data import resolve_data_root

        if args.split == "test":
            raise ConfigError("calibrating on the test split would leak it into every test number; use val")
        if args.l2 < 0:
            raise ConfigError(f"--l2 must be >= 0, got {args.l2}")
        report = run_calibrate(runtime, resolve_data_root(args.data_root), out, args.split, args.l2, args.batch_size)
    elif args.command == "suite":
        from training.data import resolve_data_root

        data_root = resolve_data_root(args.data_root)
        baseline = None
        if args.baseline is not None:  # fail on a bad baseline before the long evaluation
            baseline = KeepfitRuntime.from_artifact(args.baseline, intra_op_threads=threads_from_env())
        report = evalcmd.run_suite(runtime, data_root, args.split, out, args.batch_size, run_dir=args.run)
        if baseline is not None:
            base = evalcmd.run_suite(baseline, data_root, args.split, out / "baseline", args.batch_size)
            report["text"] += "\n\n" + evalcmd.write_comparison(out, [
                (f"{baseline.artifact.name} {baseline.version} (baseline)", base),
                (f"{runtime.artifact.name} {runtime.version}", report)])
    elif args.command == "unseen-site":
        from training.data import resolve_data_root

        data_root = resolve_data_root(args.data_root)
        splits = [x.strip() for x in args.splits.split(",") if x.strip()]
        baseline = None
        if args.baseline is not None:  # fail on a bad baseline before the evaluation
            baseline = KeepfitRuntime.from_artifact(args.baseline, intra_op_threads=threads_from_env())
        report = evalcmd.run_unseen_site(runtime, data_root, splits, out, args.batch_size)
        if baseline is not None:
            base = evalcmd.run_unseen_site(baseline, data_root, splits, out / "baseline", args.batch_size)
            report["text"] = evalcmd.unseen_site_comparison(out, (
                f"{baseline.artifact.name} {baseline.version} (baseline)", base),
                (f"{runtime.artifact.name} {runtime.version}", report))
            base.pop(evalcmd.ROWS)
        report.pop(evalcmd.ROWS)
    elif args.command == "synonyms":
        from training.data import resolve_data_root

        report = evalcmd.run_synonyms(runtime, resolve_data_root(args.data_root), args.split, out, args.batch_size,
                                      only=args.task)
    else:
        categories = None
        if args.categories is not None:
            categories = [c.strip() for c in args.categories.split(",") if c.strip()]
            twice = sorted({c for c in categories if categories.count(c) > 1})
            if not categories or twice:  # '' fell back to the labels present without a word
                raise DataError(f"--categories {args.categories!r}: " + (
                    f"names {twice[0]!r} twice" if twice else "names no category (or leave it out for the labels present)"))
        spec = evalcmd.TaskArgs(
            manifest=args.manifest, label_column=args.label_column,
            categories=categories,
            modality=args.modality, split=args.split, where=_where(args.where), require=list(args.require),
        )
        if args.command == "zero-shot":
            report = evalcmd.run_zero_shot(runtime, spec, out, args.batch_size, args.decision)
        elif args.command == "retrieval":
            report = evalcmd.run_retrieval(runtime, spec, out, _ints(args.k, "--k"), args.batch_size)
        elif args.command == "few-shot":
            report = evalcmd.run_few_shot(runtime, spec, out, _ints(args.shots, "--shots"), args.repeats,
                                          args.train_split, args.batch_size)
        else:
            report = evalcmd.run_linear_probe(runtime, spec, out, args.train_split, args.val_split, args.batch_size)
    return report
