"""What to index: the images of a folder, or the rows of one or more manifest CSVs.

A manifest has a ``path`` column (relative to the CSV's folder, or absolute) and optionally ``modality``,
``caption`` and label columns.  Label columns are chosen with ``label_columns``; by default every column that is
not bookkeeping (path, modality, split, patient, eye, task, caption, ...) holds labels.  A cell's text is the
label (``dme = diabetic macular edema``); a column of yes/no values (0/1, true/false) labels its yes rows by the
column's name instead, and its no rows not at all.  Which kind a column is, is read over all of the manifest's
rows, whatever ``splits`` keeps.  The row numbers pandas saves (``Unnamed: 0``) are not labels either.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from model.errors import DataError
from model.manifest import listed_file, read_manifest

logger = logging.getLogger(__name__)

NON_LABEL_COLUMNS = frozenset(
    {
        "path",
        "modality",
        "split",
        "patient",
        "patient_id",
        "eye",
        "task",
        "caption",
        "id",
        "width",
        "height",
        "sha256",
    }
)
# Columns that identify a person, never labels unless named with --label-columns: labels are returned in search
# hits and cached ("date_of_birth" became a searchable label). Compared with case, spaces, hyphens and camelCase
# aside (a PACS export's DICOM keywords: PatientBirthDate is patient_birth_date); any other patient_* column too.
IDENTIFYING_COLUMNS = frozenset(
    {
        "name", "patient_name", "patientname", "first_name", "last_name", "surname", "given_name",
        "dob", "date_of_birth", "birth_date", "birthdate", "birthday", "age", "sex", "gender",
        "mrn", "medical_record_number", "record_number", "accession", "accession_number", "study_id",
        "study_date", "date", "exam_date", "visit_date", "acquisition_date",
        "address", "phone", "email", "institution", "hospital", "physician", "doctor", "referring_physician",
        "operator", "ssn", "national_id", "insurance",
        "firstname", "lastname", "fullname", "full_name", "institution_name",
        "referring_physician_name", "performing_physician_name", "operators_name", "device_serial_number",
        "study_instance_uid", "series_instance_uid", "sop_instance_uid", "series_date", "content_date",
        "acquisition_date_time", "study_time",
    }
)


def _column_key(name: str) -> str:
    # camelCase as words ("PatientID" -> patient_id): PatientID, PatientBirthDate, StudyDate became labels
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name.strip())
    return "_".join(words.lower().replace("-", " ").split())


def _identifying(key: str) -> bool:
    return key in IDENTIFYING_COLUMNS or key.startswith("patient_")


# The row index pandas writes with DataFrame.to_csv (and reads back as a column of that name): numbers, not labels
_SAVED_INDEX = re.compile(r"Unnamed: \d+")

TRUE_VALUES = frozenset({"1", "true", "yes", "y", "t"})
FALSE_VALUES = frozenset({"0", "false", "no", "n", "f"})


@dataclass(frozen=True, slots=True)  # no __dict__: a million of them in a build
class ImageItem:
    """One image to embed: where it is and what its source says about it."""

    seq: int  # position in the input order: results are assembled in this order whatever ran them
    source: str  # absolute path
    modality: str | None = None
    labels: tuple[str, ...] = ()
    caption: str | None = None
    # A manifest row's own words, for messages that must point at the row a user can fix: its path cell as
    # written (a Windows path, one relative to another folder), the manifest and the row's line.
    given: str | None = None
    manifest: str | None = None
    line: int = 0


@dataclass
class SourceSet:
    items: list[ImageItem] = field(default_factory=list)
    roots: list[Path] = field(
        default_factory=list
    )  # folders the paths came from (image root = their common root)
    descriptions: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # manifest columns seen
    # folders under a root that could not be listed (permissions): their images are not in ``items``
    unlisted: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)


# What operating systems and NAS boxes keep beside a clinic's photographs, never photographs of its own: a Synology's
# thumbnails (``@eaDir``, small JPEGs of every image, which were indexed and classified as eyes), recycle bins (a
# deleted copy became the stored path of the live image it duplicates), snapshots and volume bookkeeping; and the
# files Windows and macOS leave in folders.  Matched case-insensitively, at any depth below the folder given (one
# given by name is read).  Hidden names (``.DS_Store``, ``._x.jpg``, ``.@__thumb``) are left out anyway.
SYSTEM_FOLDERS = frozenset(
    name.casefold()
    for name in (
        "@eaDir", "#recycle", "#snapshot", "@Recycle", "@Recently-Snapshot", "@__thumb", "$RECYCLE.BIN", "RECYCLER",
        "System Volume Information", "lost+found", "__MACOSX",
    )
)
SYSTEM_FILES = frozenset(name.casefold() for name in ("Thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"))


# A folder name that looks like a person's identifier rather than a finding: a run of 6 or more digits (a record
# number, a date written 19610203), a date written with separators, the usual abbreviations not inside a word
# (`MRN12345`, `Patient01` are; `fluid`, `rapid` are not), or `ID` before a number (`ID 4411`; not `ID_grade`).
_PERSONAL = re.compile(
    r"\d{6,}|\b\d{1,4}[-./]\d{1,2}[-./]\d{1,4}\b|(?<![a-z])(mrn|dob|patient|pid|nhs|ssn)(?![a-z])|(?<![a-z])id[\W_]*\d",
    re.IGNORECASE,
)


def looks_personal(label: str) -> bool:
    """Whether a folder label looks like a person's identifier (see :data:`_PERSONAL`), not a finding."""
    return _PERSONAL.search(label) is not None


def is_system_name(name: str, folder: bool) -> bool:
    """Whether a file or folder of this name is an operating system's or a NAS's, not the archive's."""
    return name.startswith(".") or name.casefold() in (SYSTEM_FOLDERS if folder else SYSTEM_FILES)


def from_folder(root: Path, modality: str | None = None, labels_from_folders: bool = False) -> SourceSet:
    """Every file under ``root`` (recursively, through links to folders, each real folder once; hidden files and
    folders, and those of an operating system or a NAS, aside: :func:`is_system_name`): non-images are skipped
    later, when they fail to decode, and counted in the summary."""
    root = root.expanduser()
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (use --manifest for a CSV)")
    root = root.resolve()
    files, unlisted = _list_folder(root)
    files.sort()
    for folder, why in unlisted:
        logger.warning("%s: cannot list %s (%s): its images are left out", root, folder, why)
    items: list[ImageItem] = []
    for path in files:
        labels: tuple[str, ...] = ()
        if labels_from_folders and path.parent != root:
            labels = (path.parent.name.replace("_", " "),)
        items.append(ImageItem(seq=len(items), source=str(path), modality=modality, labels=labels))
    logger.info("%s: %d files", root, len(items))
    personal = sorted({label for item in items for label in item.labels if looks_personal(label)})
    if personal:  # not named here: the log would carry them too
        logger.warning(
            "%s: %d folder labels look like a person's identifiers (a record number, a date, MRN or ID): labels are "
            "returned to every API caller and searchable; name the folders by finding, or build without "
            "--labels-from-folders", root, len(personal))
    return SourceSet(items=items, roots=[root], descriptions=[f"folder {root}"], unlisted=unlisted)


def _list_folder(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files under ``root`` (hidden and system files and folders aside: :func:`is_system_name`) and the folders
    that could not be listed, with why.

    Links to folders are followed: a clinic's archive is often assembled from links (a month's folder on a NAS
    linked in), and its images must not go missing without a word. Each folder is listed once, under one path:
    the archive's own folders first, without following any link; then, round by round in sorted order, the links
    found so far, each target listed the same way (its own folders, without following links). A link to a folder
    already listed adds nothing (a shortcut, `Current -> 2026/11`, leaves the month's paths and folder labels as
    they are, in the archive or in a linked NAS tree alike), and a link to a folder that holds the archive or the
    link itself (`up -> ..`) is not followed: no loop, and nothing beside the linked folder is read. A broken link
    is kept (reading it fails and is counted, as an unreadable file is); a folder that cannot be listed is named,
    not passed over in silence."""
    files: list[Path] = []
    unlisted: list[tuple[str, str]] = []
    listed: dict[tuple[int, int], str] = {}  # (device, inode) of each folder listed -> the path it is listed under
    skipped: list[str] = []  # system folders left out

    def list_tree(top: str) -> list[str]:
        """List ``top``'s own folders (no link followed); the links to folders found in them."""
        links: list[str] = []
        for folder, subfolders, names in os.walk(
            top, onerror=lambda err: unlisted.append((str(err.filename), err.strerror or str(err)))
        ):
            try:
                info = os.stat(folder)
            except OSError as err:  # gone since it was listed
                unlisted.append((folder, err.strerror or str(err)))
                subfolders[:] = []
                continue
            if listed.setdefault((info.st_dev, info.st_ino), folder) != folder:  # a bind mount, a hard-linked folder
                subfolders[:] = []
                continue
            kept = []
            for name in subfolders:
                if is_system_name(name, folder=True):
                    if not name.startswith("."):
                        skipped.append(os.path.join(folder, name))
                    continue
                if os.path.islink(os.path.join(folder, name)):
                    links.append(os.path.join(folder, name))
                else:
                    kept.append(name)
            subfolders[:] = kept
            for name in names:
                path = Path(folder) / name
                if not is_system_name(name, folder=False) and (
                    path.is_file() or (path.is_symlink() and not path.exists())
                ):
                    files.append(path)  # not a socket or a pipe
        return links

    links = list_tree(str(root))
    while links:
        found: list[str] = []
        for link in sorted(links):
            try:
                info = os.stat(link)
            except OSError as err:  # out of reach since it was listed
                unlisted.append((link, err.strerror or str(err)))
                continue
            target = os.path.realpath(link)
            first = listed.get((info.st_dev, info.st_ino))
            if first is not None:
                logger.info("%s links to %s, whose images are listed once, under %s", link, target, first)
                continue
            inside = target.rstrip(os.sep) + os.sep
            if any((place + os.sep).startswith(inside) for place in (str(root), os.path.realpath(os.path.dirname(link)))):
                logger.warning("%s links to %s, which holds the archive or the link itself: not followed", link, target)
                continue
            found += list_tree(link)
        links = found
    if skipped:
        logger.info(
            "%s: left out %d system folder(s) (NAS thumbnails, recycle bins, volume bookkeeping): %s",
            root, len(skipped), ", ".join(sorted(skipped)[:5]) + (", ..." if len(skipped) > 5 else ""),
        )
    return files, unlisted


def _is_boolean(values: Sequence[str]) -> bool:
    seen = {v.lower() for v in values if v}
    return bool(seen) and seen <= (TRUE_VALUES | FALSE_VALUES)


def from_manifest(
    path: Path,
    label_columns: Sequence[str] | None = None,
    modality: str | None = None,
    splits: Sequence[str] | None = None,
) -> SourceSet:
    """The rows of one manifest CSV.  ``label_columns``: columns to take labels from (those this manifest lacks
    are ignored here; :func:`from_manifests` checks that each exists somewhere).  ``splits``: keep only rows
    whose ``split`` column is one of these (e.g. index the test split to evaluate retrieval honestly)."""
    path = path.expanduser().resolve()
    manifest = read_manifest(path)
    columns = list(manifest.columns)
    numbered = list(zip(manifest.lines, manifest.rows, strict=True))  # the file's line numbers, whatever --split keeps
    if splits:
        if "split" not in columns:
            raise DataError(f"manifest {path} has no 'split' column to select {', '.join(splits)} from")
        present = sorted({r.get("split", "") for r in manifest.rows} - {""})
        numbered = [(line, r) for line, r in numbered if r.get("split") in set(splits)]
        if not numbered and present:
            raise DataError(f"manifest {path}: no rows in split {', '.join(map(repr, splits))} "
                            f"(splits present: {', '.join(present)})")
    if label_columns is None:
        keys = {c: _column_key(c) for c in columns}
        saved_index = [c for c in columns if _SAVED_INDEX.fullmatch(c)]
        if saved_index:  # taken as labels, every image got its row number as one
            logger.info("manifest %s: the columns %s are row numbers pandas saved, not labels: ignored", path.name,
                        ", ".join(saved_index))
        chosen = [c for c in columns if c and keys[c] not in NON_LABEL_COLUMNS and not _identifying(keys[c])
                  and c not in saved_index]
        if chosen:  # every other column becomes labels, which search answers return: say which
            logger.info("manifest %s: labels from the columns %s (choose with --label-columns)", path.name,
                        ", ".join(chosen))
    else:
        chosen = [c for c in label_columns if c in columns]
    # Which kind a column is (yes/no or text) is read over all its rows, whatever the split: decided over the rows
    # kept, a 0-4 grade column whose test rows hold only 0 and 1 read as yes/no there, so the same cell was the
    # label "1" in one index and the column's name (or nothing) in another.
    boolean = {c for c in chosen if _is_boolean([r.get(c, "") for r in manifest.rows])}
    base = path.parent
    items: list[ImageItem] = []
    for line, row in numbered:
        rel = row.get("path", "")
        if not rel:
            logger.warning("%s line %d: empty path, row skipped", path, line)
            continue
        try:
            file = listed_file(base, rel)
        except DataError as err:
            raise DataError(f"manifest {path} line {line}: {err}") from None
        labels: list[str] = []
        for column in chosen:
            value = row.get(column, "")
            if column in boolean:
                if value.lower() in TRUE_VALUES:
                    labels.append(column)
            elif value:
                labels.append(value)
        items.append(
            ImageItem(
                seq=len(items),
                source=str(file.resolve()),
                modality=row.get("modality") or modality,
                labels=tuple(dict.fromkeys(labels)),
                caption=row.get("caption") or None,
                given=rel,
                manifest=str(path),
                line=line,
            )
        )
    logger.info("%s: %d rows, label columns: %s", path, len(items), ", ".join(chosen) or "none")
    return SourceSet(
        items=items,
        roots=[base],
        descriptions=[f"manifest {path} (labels: {', '.join(chosen)})"],
        columns=columns,
    )


def from_manifests(
    paths: Sequence[Path],
    label_columns: Sequence[str] | None = None,
    modality: str | None = None,
    splits: Sequence[str] | None = None,
) -> SourceSet:
    """Several manifests as one input; an explicitly requested label column must exist in at least one of them."""
    sets = [from_manifest(p, label_columns, modality, splits) for p in paths]
    if label_columns is not None:
        present = {c for s in sets for c in s.columns}
        missing = [c for c in label_columns if c not in present]
        if missing:
            raise DataError(
                f"label column(s) {', '.join(missing)} not found in {', '.join(str(p) for p in paths)} "
                f"(columns: {', '.join(sorted(present))})"
            )
    return merge(sets)


def merge(sets: Sequence[SourceSet]) -> SourceSet:
    out = SourceSet()
    for s in sets:
        out.items.extend(s.items)
        out.unlisted.extend(s.unlisted)
        out.roots.extend(s.roots)
        out.descriptions.extend(s.descriptions)
        out.columns.extend(c for c in s.columns if c not in out.columns)
    out.items = [replace(it, seq=i) for i, it in enumerate(out.items)]
    return out
