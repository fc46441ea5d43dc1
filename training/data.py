"""Data for training and evaluation: CSV manifests, public (categorical) samples, the elite (image, caption)
manifest, the text corpus and image loading with counted skips.

A manifest is a CSV with a ``path`` column (resolved relative to the manifest's own folder, so any labelled
folder of images can be used), optional ``modality`` and ``split`` columns and one or more label columns.
Everything is validated before training or evaluation starts: a missing file, an unknown column or an empty
split is a :class:`~model.errors.DataError` with the offending value, never a crash deep in a data loader.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from model.dicom import DICOM_HEAD_BYTES, is_dicom
from model.errors import DataError, ImageError
from model.files import atomic_write
from model.knowledge import Knowledge
from model.manifest import Manifest, read_manifest, read_table
from model.preprocess import load_image, original_size

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "KEEPFIT_DATA_ROOT"


def resolve_data_root(flag: str | Path | None = None) -> Path:
    """``--data-root``, else ``$KEEPFIT_DATA_ROOT``, else ``../shared/data`` when present (never absolute)."""
    if flag is not None:
        source, path = "--data-root", Path(flag)
    elif os.environ.get(DATA_ROOT_ENV):
        source, path = f"${DATA_ROOT_ENV}", Path(os.environ[DATA_ROOT_ENV])
    else:
        source, path = "the default", Path("..") / "shared" / "data"
    if not path.is_dir():
        raise DataError(f"data root {path} ({source}) is not a directory; pass --data-root or set ${DATA_ROOT_ENV}")
    return path


# ------------------------------------------------------------------------------------------------ manifests
def filter_rows(
    manifest: Manifest,
    split: str | None = None,
    where: Sequence[tuple[str, str]] = (),
    require: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Rows of one split (all rows where the manifest has no ``split`` column) with ``column == value`` for each
    ``where`` pair and a non-empty value in each ``require`` column.  An empty result is a :class:`DataError`."""
    manifest.require_columns([c for c, _ in where] + list(require))
    rows = list(manifest.rows)
    if not rows:  # not "no rows match split=test", "splits present: " (nothing): there is nothing to match
        raise DataError(f"manifest {manifest.path} has no rows, only its header")
    if split is not None:
        if "split" in manifest.columns:
            present = sorted({r["split"] for r in rows})
            rows = [r for r in rows if r["split"] == split]
            if not rows:
                raise DataError(
                    f"manifest {manifest.path} has no rows in split {split!r} (splits present: {', '.join(present)})"
                )
        else:
            logger.info("%s has no 'split' column: using all %d rows", manifest.path, len(rows))
    for column, value in where:
        rows = [r for r in rows if r[column] == value]
    for column in require:
        rows = [r for r in rows if r[column]]
    if not rows:
        conditions = [f"split={split}"] if split else []
        conditions += [f"{c}={v}" for c, v in where] + [f"{c} non-empty" for c in require]
        raise DataError(f"manifest {manifest.path}: no rows match {', '.join(conditions) or 'anything'}")
    return rows


def check_files(manifest: Manifest, rows: Sequence[dict[str, str]]) -> None:
    """Every image a row names must exist; the error counts the missing ones and names a few."""
    missing = [r["path"] for r in rows if not r["path"] or not manifest.resolve(r).is_file()]
    if missing:
        # an empty cell named the folder itself, and was shown as nothing ("photos, ")
        examples = ", ".join(p or "(an empty path cell)" for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(
            f"manifest {manifest.path}: {len(missing)} of {len(rows)} image files are missing "
            f"(paths resolve relative to {manifest.folder}): {examples}"
        )


# ------------------------------------------------------------------------------------------------- copies
# The splits a training split must not see, and what counts as a copy of one of their images: the mean absolute
# difference of two 32x32 grey thumbnails (0-255) below 0.5 grey levels.  The shared data's re-encoded copies
# filed in other splits measure 0.08 and 0.13; no other pair of a training image and a held-out one (val, test,
# the unseen site) comes within 1.0: the closest, two near-black photographs, 1.11; another capture of the same
# eye, which this does not try to catch, 1.56 (tests/training/test_training_data_disjoint.py).
HELD_OUT_SPLITS = ("val", "test")
FINGERPRINT_SIDE = 32
COPY_MAX_MAD = 0.5


def fingerprint(path: Path, side: int = FINGERPRINT_SIDE) -> np.ndarray | None:
    """An image's ``side`` x ``side`` grey thumbnail (float32, 0-255, flattened), decoded at a reduced scale
    where the format allows (JPEG draft), or ``None`` when unreadable (the loader skips and counts those).

    A DICOM object is read as training reads it (``load_image``: its frame, its colour space): Pillow cannot open
    one, and a camera's DICOM export of a held-out photograph was no one's copy, so it was trained on."""
    try:
        with path.open("rb") as fh:
            dicom = is_dicom(fh.read(DICOM_HEAD_BYTES))
        if dicom:
            grey = load_image(path, size=4 * side).convert("L")
        else:
            with Image.open(path) as im:
                im.draft("L", (4 * side, 4 * side))
                grey = im.convert("L")
        return np.asarray(grey.resize((side, side), Image.Resampling.BILINEAR), np.float32).ravel()
    except (OSError, ValueError, Image.DecompressionBombError, ImageError) as err:
        logger.debug("no fingerprint of %s: %s", path, err)
        return None


def find_copies(
    images: Sequence[Path], against: Sequence[Path], max_mad: float = COPY_MAX_MAD, block: int = 128
) -> dict[int, int]:
    """``{i: j}``: ``images[i]`` is a copy of ``against[j]`` (the nearest one): their :func:`fingerprint` differ
    by less than ``max_mad`` grey levels on average.  Compared in blocks with numpy: the means of a 4 x 4 grid of
    tiles bound the difference from below (the mean of |a - b| over a tile is at least |mean a - mean b|), so
    only the few pairs they do not rule out are compared in full.  Unreadable images are no one's copy."""
    a, a_index = _fingerprints(images)
    b, b_index = _fingerprints(against)
    if not len(a) or not len(b):
        return {}
    coarse_a, coarse_b = _tile_means(a), _tile_means(b)
    nearest: dict[int, tuple[float, int]] = {}
    for start in range(0, len(a), block):
        bound = np.abs(coarse_a[start:start + block, None, :] - coarse_b[None, :, :]).mean(-1)
        rows, cols = np.nonzero(bound < max_mad)
        for chunk in range(0, len(rows), 4096):  # bounded memory however alike the images are
            r, c = rows[chunk:chunk + 4096] + start, cols[chunk:chunk + 4096]
            mad = np.abs(a[r] - b[c]).mean(-1)
            for k in np.flatnonzero(mad < max_mad):  # the copies only: few
                i, j = int(a_index[r[k]]), int(b_index[c[k]])
                if i not in nearest or mad[k] < nearest[i][0]:
                    nearest[i] = (float(mad[k]), j)
    return {i: j for i, (_, j) in nearest.items()}


def _fingerprints(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The fingerprints of the readable ``paths`` as one array, and those paths' indices."""
    prints = [fingerprint(p) for p in paths]
    index = np.asarray([i for i, f in enumerate(prints) if f is not None], dtype=np.int64)
    if not len(index):
        return np.zeros((0, FINGERPRINT_SIDE**2), np.float32), index
    return np.stack([f for f in prints if f is not None]), index


def _tile_means(prints: np.ndarray, grid: int = 4) -> np.ndarray:
    """The means of a ``grid`` x ``grid`` tiling of flattened square thumbnails."""
    k = FINGERPRINT_SIDE // grid
    return prints.reshape(len(prints), grid, k, grid, k).mean(axis=(2, 4)).reshape(len(prints), grid * grid)


# ---------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class Sample:
    """One image with its modality, labels (canonical category names) and, for elite pairs, its caption."""

    path: Path
    modality: str
    labels: tuple[str, ...]
    split: str = ""
    source: str = ""
    caption: str = ""

    @property
    def stratum(self) -> tuple[str, str, tuple[str, ...]]:
        """What class-balanced sampling balances over: the source, modality and full label set."""
        return (self.source, self.modality, tuple(sorted(self.labels)))


@dataclass(frozen=True)
class PublicSource:
    """A categorical manifest under the data root and the columns whose values are its labels."""

    manifest: str
    label_columns: tuple[str, ...]
    modality: str | None = None  # used where the manifest has no modality column

    @classmethod
    def parse(cls, spec: str) -> PublicSource:
        """``relative/labels.csv:col1,col2``."""
        if ":" not in spec:
            raise DataError(f"public source {spec!r} must look like MANIFEST:COLUMN[,COLUMN...]")
        manifest, cols = spec.rsplit(":", 1)
        columns = tuple(c.strip() for c in cols.split(",") if c.strip())
        if not columns:
            raise DataError(f"public source {spec!r} names no label column")
        return cls(manifest=manifest, label_columns=columns)


DEFAULT_PUBLIC: tuple[PublicSource, ...] = (
    PublicSource("cfp_oct_mx/labels.csv", ("dme", "dr")),
    PublicSource("ffa_huapu4/labels.csv", ("label",)),
)


def spelt_as_known(modality: str, knowledge: Knowledge) -> str:
    """``cfp`` as the knowledge spells it (``CFP``), as evaluation, indexing and serving read it; an unknown one
    as given (a manifest that says ``cfp`` trained on nothing while evaluation scored it)."""
    return next((m for m in knowledge.modalities if m.upper() == modality.strip().upper()), modality)


def split_labels(value: str, knowledge: Knowledge) -> list[str]:
    """A label cell -> canonical category names.  ``"X with Y"`` that is not itself a known category becomes
    ``[X, Y]`` (ffa_huapu4's "branch retinal vein occlusion with non-perfusion area")."""
    name = knowledge.canonical(value)
    known = knowledge.data["categories"]
    if name in known or " with " not in name:
        return [name]
    return [knowledge.canonical(part) for part in name.split(" with ") if part.strip()]


@dataclass
class SampleSet:
    samples: list[Sample]
    skipped: Counter[str] = field(default_factory=Counter)


def public_samples(
    data_root: Path,
    knowledge: Knowledge,
    split: str,
    sources: Sequence[PublicSource] = DEFAULT_PUBLIC,
    holdout: Sequence[str] = (),
    drop_held_out_copies: bool = True,  # TrainConfig.drop_held_out_copies (this module stays torch-free)
) -> SampleSet:
    """Categorical samples of one split from every source; rows of an unknown modality (ffa_huapu4's colour /
    infrared "not an angiogram" images) and rows carrying a held-out category are skipped and counted.

    ``drop_held_out_copies`` (``train`` only): an image that is a re-encoded copy (:func:`find_copies`) of an
    image of a held-out split (``val`` or ``test``) of any of these manifests is skipped and counted too: the
    shared data files such copies under other names and patient ids, which a path or SHA-256 check misses."""
    held = {knowledge.canonical(h) for h in holdout}
    out = SampleSet(samples=[])
    held_out: dict[Path, str] = {}  # image -> its held-out split, of every source
    for source in sources:
        manifest = read_manifest(data_root / source.manifest)
        manifest.require_columns(source.label_columns, what="label column")
        if split == "train" and drop_held_out_copies and "split" in manifest.columns:
            held_out.update((manifest.resolve(r), r["split"]) for r in manifest.rows if r["split"] in HELD_OUT_SPLITS)
        rows = filter_rows(manifest, split=split)
        check_files(manifest, rows)
        found: dict[Path, list[Sample]] = {}
        for row in rows:
            modality = spelt_as_known(row.get("modality") or source.modality or "", knowledge)
            if modality not in knowledge.modalities:
                out.skipped[f"{source.manifest}: modality {modality or '(none)'!r}"] += 1
                continue
            labels: list[str] = []
            for column in source.label_columns:
                if row[column]:
                    labels += split_labels(row[column], knowledge)
            if not labels:
                out.skipped[f"{source.manifest}: no label"] += 1
                continue
            if held.intersection(labels):
                out.skipped[f"{source.manifest}: held-out {sorted(held.intersection(labels))[0]!r}"] += 1
                continue
            path = manifest.resolve(row)
            found.setdefault(manifest.identity(row), []).append(
                Sample(
                    path=path,
                    modality=modality,
                    labels=tuple(dict.fromkeys(labels)),
                    split=row.get("split", split),
                    source=source.manifest,
                )
            )
        out.samples += _one_sample_per_image(found, source.manifest, out.skipped)
    if held_out:
        out.samples = _drop_held_out_copies(out.samples, held_out, out.skipped)
    if not out.samples:
        why = "; ".join(f"{n} rows skipped: {reason}" for reason, n in sorted(out.skipped.items()))
        hint = (
            "; a manifest without a 'modality' column needs one (CFP, FFA or OCT on each row)"
            if any(reason.endswith("modality '(none)'") for reason in out.skipped) else ""
        )
        raise DataError(f"no {split} samples in {', '.join(s.manifest for s in sources)} under {data_root}"
                        + (f" ({why}{hint})" if why else ""))
    for reason, count in sorted(out.skipped.items()):
        logger.info("skipped %d %s rows (%s)", count, split, reason)
    return out


def _drop_held_out_copies(samples: list[Sample], held_out: dict[Path, str], skipped: Counter[str]) -> list[Sample]:
    """``samples`` less those whose image is a copy of a held-out one (counted per source and split, logged)."""
    held_paths = sorted(held_out)
    copies = find_copies([s.path for s in samples], held_paths)
    kept = []
    for i, s in enumerate(samples):
        if i not in copies:
            kept.append(s)
            continue
        twin = held_paths[copies[i]]
        skipped[f"{s.source}: copy of a held-out ({held_out[twin]}) image"] += 1
        logger.info("not training on %s: a copy of the %s image %s", s.path, held_out[twin], twin)
    return kept


def _one_sample_per_image(found: dict[Path, list[Sample]], source: str, skipped: Counter[str]) -> list[Sample]:
    """An image listed in several rows of a source is trained on once where the rows agree, and not at all where
    they disagree (counted in ``skipped``), as the evaluation scores it: a repeated row would weigh one
    photograph twice, and of two gradings of one photograph one is wrong (two of ``dr_sh_600``'s train images
    are graded both moderate DR with maculopathy and severe DR without)."""
    kept = []
    for samples in found.values():
        if len({(s.modality, frozenset(s.labels)) for s in samples}) > 1:
            skipped[f"{source}: image listed with conflicting labels"] += len(samples)
            continue
        if len(samples) > 1:
            skipped[f"{source}: image listed twice"] += len(samples) - 1
        kept.append(samples[0])
    return kept


# -------------------------------------------------------------------------------------------------- elite
ELITE_COLUMNS = ("path", "modality", "caption", "labels")


def compose_elite(
    samples: Sequence[Sample],
    knowledge: Knowledge,
    fraction: float = 0.25,
    min_per_stratum: int = 4,
    seed: int = 0,
) -> list[Sample]:
    """The default elite set: a stratified subset of the training images with rich captions composed from all
    their labels plus the expert descriptions of those labels (no expert-captioned images are obtainable here;
    see DESIGN section 4).  Every label set keeps at least ``min_per_stratum`` images."""
    if not 0 < fraction <= 1:
        raise DataError(f"elite fraction must be in (0, 1], got {fraction}")
    rng = random.Random(seed)
    by_stratum: dict[tuple[str, str, tuple[str, ...]], list[Sample]] = defaultdict(list)
    for s in samples:
        by_stratum[s.stratum].append(s)
    elite: list[Sample] = []
    for key in sorted(by_stratum):
        group = sorted(by_stratum[key], key=lambda s: str(s.path))
        take = min(len(group), max(min_per_stratum, round(fraction * len(group))))
        for s in rng.sample(group, take):
            caption = knowledge.caption(list(s.labels), s.modality)
            elite.append(Sample(s.path, s.modality, s.labels, s.split, s.source, caption))
    return elite


# ------------------------------------------------------------------------------------ atlas (elite) captions
# MM-Retinal's atlas captions (text/mm_retinal_*_captions.csv): real expert descriptions of colour photographs
# and angiograms whose images are not obtainable here.  ``--elite-text atlas`` pairs each elite image with an
# atlas caption describing the same condition in the same modality: the pairing is at the level of the
# condition, not the image, but the text is the expert atlas language the KeepFIT papers transfer.
ATLAS_FILES = {"CFP": "text/mm_retinal_cfp_captions.csv", "FFA": "text/mm_retinal_ffa_captions.csv"}
# the atlas figures with their captions whose rows outside ``train`` evaluation scores (image <-> caption retrieval)
ATLAS_PAIRS = "mm_retinal_cfp_pairs/pairs.csv"
_NORMAL = r"\bnormal (fundus|person|human|subjects?|eyes?|retina|individuals?)\b"
_EDEMA = r"macular (o)?edema"
ATLAS_PATTERNS: dict[str, dict[str, str]] = {
    "CFP": {
        "diabetic macular edema": (rf"^(?=.*\b(N?PDR|diabet))(?=.*{_EDEMA})|\bDME\b|\bCSME\b|"
                                   rf"clinically significant {_EDEMA}"),
        "non-proliferative diabetic retinopathy": r"non-?proliferative diabetic|\bNPDR\b|background diabetic",
        "proliferative diabetic retinopathy": r"(?<![Nn]on)(?<![Nn]on-)proliferative diabetic|\bPDR\b",
        "normal": _NORMAL,
    },
    "FFA": {
        "branch retinal vein occlusion": r"branch (retinal )?vein (occlusion|obstruction)|\bBRVO\b",
        "non-perfusion area": r"non-?perfusion|capillary (non-?perfusion|dropout|closure)",
        "normal": _NORMAL,
        "arterial phase": r"\barterial (phase|filling)|early (arterio-?venous|phase)|laminar (flow|filling)",
        "venous phase": r"\bvenous phase|late (arterio-?venous|phase|stage)",
    },
}
# label sets made only of these mean "nothing found": they take the atlas's normal-eye captions
NEGATIVE_LABELS = frozenset({"no diabetic macular edema", "no diabetic retinopathy"})
# what a negative label denies: captions naming it are never paired with an image carrying that label
DENIES = {
    "no diabetic macular edema": ("diabetic macular edema",),
    "no diabetic retinopathy": ("non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy"),
    "no non-perfusion area": ("non-perfusion area",),
}
_CLEAN = [
    (re.compile(r"\s*\b[Ss]ame (person|patient|eye|case|subject)s? as [^.]*(\.|$)"), " "),
    (re.compile(r"\b(Figures?|Figs?\.?)\s*\d+[-–.]\d+[A-Za-z]?(\s*(,|and)\s*\d+[-–.]\d+[A-Za-z]?)*"), ""),
    (re.compile(r"\s*\((arrows?|arrowheads?|stars?|insets?|asterisks?|white arrows?|black arrows?)\)", re.I), ""),
    (re.compile(r"\s+"), " "),
]


def clean_atlas_caption(text: str) -> str:
    """Drop figure cross-references and pointer remarks; the description itself is kept verbatim."""
    for pattern, repl in _CLEAN:
        text = pattern.sub(repl, text)
    text = text.strip(" ;,")
    return text if not text or text.endswith(".") else text + "."


def read_atlas_captions(data_root: Path) -> dict[str, list[str]]:
    """Modality -> cleaned, distinct atlas captions (the FFA file keeps them as a Python list literal)."""
    out: dict[str, list[str]] = {}
    for modality, rel in ATLAS_FILES.items():
        path = data_root / rel
        if not path.is_file():
            raise DataError(f"--elite-text atlas needs {path} (MM-Retinal atlas captions); it is missing")
        columns, rows = read_table(path)
        column = next((c for c in ("caption", "categories") if c in columns), None)
        if column is None:
            raise DataError(f"{path} has neither a 'caption' nor a 'categories' column")
        texts = []
        for row in rows:
            raw = row.get(column, "")
            if raw.startswith("["):
                try:
                    raw = " ".join(str(x) for x in ast.literal_eval(raw))
                except (ValueError, SyntaxError):
                    pass
            text = clean_atlas_caption(raw)
            if len(text.split()) >= 3:
                texts.append(text)
        out[modality] = list(dict.fromkeys(texts))
    return out


def fold_caption(text: str) -> str:
    """What two spellings of one caption share: whitespace and case folded."""
    return " ".join(text.split()).casefold()


def evaluated_captions(data_root: Path | None, elite_manifest: str | None = None) -> set[str]:
    """The captions (:func:`fold_caption`, as written and as :func:`clean_atlas_caption` leaves them) of the rows
    outside ``train`` of the atlas pairs that evaluation always scores and of the elite manifest: no training
    reads them, not as corpus text and not as the atlas caption of another image."""
    paths = [data_root / ATLAS_PAIRS] if data_root is not None else []
    if elite_manifest and elite_manifest != "none":
        paths.append(resolve_elite_manifest(elite_manifest, data_root))
    out: set[str] = set()
    for path in dict.fromkeys(paths):
        if not path.is_file():
            continue
        for row in read_manifest(path).rows:
            if row.get("split", "train") != "train" and row.get("caption"):
                out |= {fold_caption(row["caption"]), fold_caption(clean_atlas_caption(row["caption"]))}
    return out


def atlas_pools(captions: dict[str, list[str]]) -> dict[tuple[str, str], list[str]]:
    """(modality, category) -> the atlas captions that describe it (see :data:`ATLAS_PATTERNS`)."""
    pools: dict[tuple[str, str], list[str]] = {}
    for modality, patterns in ATLAS_PATTERNS.items():
        for label, pattern in patterns.items():
            rx = re.compile(pattern, re.I | re.S)
            pools[(modality, label)] = [t for t in captions.get(modality, []) if rx.search(t)]
    return pools


def atlas_candidates(sample: Sample, pools: dict[tuple[str, str], list[str]]) -> list[str]:
    """Atlas captions for one image: those naming all of its findings, else any of them; an image with only
    negative labels takes the normal-eye captions; a caption naming what one of its labels denies (a DR grade
    for "no diabetic retinopathy") is never used; none where the atlas has nothing (OCT, for one)."""
    labels = set(sample.labels)
    denied = {t for lab in labels for other in DENIES.get(lab, ()) for t in pools.get((sample.modality, other), [])}
    if labels and labels <= NEGATIVE_LABELS:
        return [t for t in pools.get((sample.modality, "normal"), []) if t not in denied]
    per_label = [[t for t in pools[(sample.modality, lab)] if t not in denied]
                 for lab in sorted(labels) if (sample.modality, lab) in pools]
    per_label = [p for p in per_label if p]
    if not per_label:
        return []
    common = set(per_label[0]).intersection(*per_label[1:])
    return [t for t in per_label[0] if t in common] if common else list(
        dict.fromkeys(t for p in per_label for t in p))


def attach_atlas_captions(
    elite: Sequence[Sample], pools: dict[tuple[str, str], list[str]], seed: int = 0
) -> tuple[list[Sample], Counter[str]]:
    """Give every elite image an atlas caption of its condition (drawn with ``seed``); images the atlas does
    not describe keep their composed caption.  Returns the samples and counts per (modality, outcome)."""
    rng = random.Random(seed)
    out: list[Sample] = []
    counts: Counter[str] = Counter()
    for s in elite:
        candidates = atlas_candidates(s, pools)
        if candidates:
            out.append(Sample(s.path, s.modality, s.labels, s.split, s.source, rng.choice(candidates)))
            counts[f"{s.modality}: atlas caption"] += 1
        else:
            out.append(s)
            counts[f"{s.modality}: composed caption (no atlas caption of its labels)"] += 1
    return out, counts


def write_elite_manifest(path: Path, samples: Sequence[Sample]) -> None:
    """CSV with paths relative to its own folder, so the file moves with what it points at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(ELITE_COLUMNS)
        for s in samples:
            rel = os.path.relpath(s.path.resolve(), path.parent.resolve())
            writer.writerow([rel, s.modality, s.caption, "|".join(s.labels)])


def read_elite_manifest(path: str | Path, knowledge: Knowledge) -> list[Sample]:
    """Real elite pairs plug in here unchanged: ``path, caption`` and optionally ``modality`` (default CFP),
    ``labels`` (``|``-separated) and ``split`` (only ``train`` rows are used when present)."""
    manifest = read_manifest(path)
    manifest.require_columns(["caption"])
    rows = filter_rows(manifest, split="train") if "split" in manifest.columns else list(manifest.rows)
    rows = [r for r in rows if r["caption"]]
    if not rows:
        raise DataError(f"elite manifest {path} has no rows with a caption")
    check_files(manifest, rows)
    out = []
    for row in rows:
        modality = spelt_as_known(row.get("modality") or "CFP", knowledge)
        if modality not in knowledge.modalities:
            raise DataError(
                f"elite manifest {path}: unknown modality {modality!r} for {row['path']}; "
                f"known: {', '.join(knowledge.modalities)}"
            )
        labels = tuple(x for x in (row.get("labels") or "").split("|") if x)
        out.append(Sample(manifest.resolve(row), modality, labels, "train", str(path), row["caption"]))
    return out


def describes(sample: Sample, category: str, knowledge: Knowledge) -> bool:
    """Whether an elite pair's caption speaks of ``category``: its atlas pattern (:data:`ATLAS_PATTERNS`) where
    there is one, else its name or an alias as words.  A held-out category's pairs must go whether or not the
    manifest labels them (the atlas pairs carry captions only, and kept the held-out class's figures)."""
    pattern = ATLAS_PATTERNS.get(sample.modality, {}).get(category)
    if pattern is not None:  # it knows "non-proliferative" from "proliferative", which names alone do not
        return re.search(pattern, sample.caption, re.I | re.S) is not None
    names = [category, *knowledge.aliases(category)]
    return any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", sample.caption, re.I) for n in names if len(n) > 2)


def resolve_elite_manifest(spec: str, data_root: Path | None) -> Path:
    """An elite manifest path as given, else relative to the data root."""
    path = Path(spec)
    if path.is_file() or path.is_absolute() or data_root is None:
        return path
    return data_root / path


@dataclass
class EliteSet:
    samples: list[Sample]
    counts: Counter[str] = field(default_factory=Counter)  # pairs per (modality, origin)


def build_elite(
    data_root: Path,
    knowledge: Knowledge,
    public: Sequence[Sample],
    manifest: str | None,
    compose_missing: bool = True,
    fraction: float = 0.25,
    text: str = "composed",
    holdout: Sequence[str] = (),
    seed: int = 0,
) -> EliteSet:
    """The elite (image, caption) set of stage 2: the real pairs of ``manifest`` (train rows only), plus, for
    every modality it has no pairs of, pairs composed from the public train images of that modality (labels +
    expert descriptions, or atlas captions with ``text="atlas"``).  Without a manifest, every pair is composed."""
    real: list[Sample] = []
    if manifest:
        held = {knowledge.canonical(h) for h in holdout}
        real = [s for s in read_elite_manifest(resolve_elite_manifest(manifest, data_root), knowledge)
                if not held.intersection(s.labels) and not any(describes(s, h, knowledge) for h in held)]
    covered = {s.modality for s in real}
    composed: list[Sample] = []
    counts: Counter[str] = Counter(f"{s.modality}: real pair" for s in real)
    if not manifest or compose_missing:
        pool = [s for s in public if s.modality not in covered]
        if pool:
            composed = compose_elite(pool, knowledge, fraction, seed=seed)
            if text == "atlas":
                # the atlas caption files hold the captions of the held-out atlas figures too
                held_text = evaluated_captions(data_root, manifest)
                atlas = {m: [t for t in texts if fold_caption(t) not in held_text]
                         for m, texts in read_atlas_captions(data_root).items()}
                composed, text_counts = attach_atlas_captions(composed, atlas_pools(atlas), seed=seed)
                counts.update(text_counts)
            else:
                counts.update(f"{s.modality}: composed caption" for s in composed)
    return EliteSet(real + composed, counts)


# ------------------------------------------------------------------------------------------------- images
@dataclass
class LoadReport:
    """Unreadable images are skipped, counted and summarised, never fatal mid-run."""

    loaded: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.loaded} images loaded"
        reasons = Counter(r.split(":")[0] for r in self.skipped.values())
        detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        return f"{self.loaded} images loaded, {len(self.skipped)} skipped as unreadable ({detail})"


def iter_images(
    paths: Sequence[Path], report: LoadReport, size: int | None = None, min_side: int = 0
) -> Iterator[tuple[int, Image.Image]]:
    """``(index, image)`` for every readable path; the rest go into ``report``.

    ``size``: the model input side, so only what the model needs is decoded (``load_image(size=...)``).
    ``min_side``: an image under it a side is skipped too (evaluation passes ``DEFAULT_MIN_IMAGE_SIDE``: the service,
    ``keepfit classify`` and the index refuse such an image, ``image_too_small``, and an evaluation that scored
    such thumbnails did not measure what the service answers).
    """
    for i, path in enumerate(paths):
        try:
            image = load_image(path, size=size)
            width, height = original_size(image)
            if min(width, height) < min_side:
                raise ImageError(
                    f"too small: {width}x{height} px, under {min_side} px a side (what the service refuses with "
                    "KEEPFIT_MIN_IMAGE_SIDE at its default)"
                )
        except ImageError as err:
            report.skipped[str(path)] = str(err)
            logger.warning("skipping unreadable image %s: %s", path, err)
            continue
        report.loaded += 1
        yield i, image


# ------------------------------------------------------------------------------------------------- corpus
def read_corpus(path: str | Path) -> list[str]:
    """The ``text`` of every line of a JSONL corpus (``{"text": ...}``), deduplicated, order kept."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text corpus not found: {path}")
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise DataError(f"{path}:{lineno} is not a JSON object with a 'text' field") from err
                if isinstance(text, str) and text.strip():
                    texts.append(" ".join(text.split()))
        except UnicodeDecodeError as err:  # was a traceback
            raise DataError(f"text corpus {path} is not UTF-8 text ({err.reason}); save it as UTF-8") from err
    texts = list(dict.fromkeys(texts))
    if not texts:
        raise DataError(f"text corpus {path} holds no text")
    return texts
