"""Expert knowledge as data: category sets per modality, expert descriptions and prompt templates.

``knowledge.json`` (shipped in every artifact) is built by :func:`build_knowledge` from FLAIR's knowledge
dictionary (``../shared/data/text/knowledge_dictionary.json``, Apache-2.0) extended with the categories of our
data and modality-specific descriptions (an OCT shows diabetic macular edema differently from a photograph).
A class's zero-shot text embedding is the mean of the embeddings of its prompts, one per description.

Clinicians word a category in many ways (``healthy``, ``no findings``, ``normal fundus``; ``DME``, ``DMO``).
``model/data/aliases.json`` lists those words per category and modality; :func:`build_knowledge` stores them in
each category's ``aliases`` field, and an alias is scored with its category's expert prompts, so every wording
of one category gives the same answer.  A name the knowledge does not know is prompted with an ensemble of
clinical sentences (``open_templates``) and reported with the known categories it resembles.

The knowledge is data, with one source each: FLAIR's dictionary, ``model/data/knowledge_source.json`` (ours) and
``model/data/aliases.json``; ``keepfit knowledge`` builds ``model/data/knowledge.json`` from them, every exported
artifact carries a copy of it (an artifact stays self-contained), and a test fails when the built file is stale.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from model.config import MODALITIES
from model.errors import ArtifactError, ConfigError
from model.files import read_json
from model.lru import LruCache

logger = logging.getLogger(__name__)

# 2: categories carry ``aliases``; ``spelling`` and ``open_templates`` sections (format-1 files still load)
KNOWLEDGE_FORMAT = 2
ANY = "any"
ALIASES_FILE = Path(__file__).parent / "data" / "aliases.json"

# how many unknown names' similar_known answers each Knowledge keeps (a key of at most a few hundred characters and
# three category names each: well under a megabyte in all)
SIMILAR_CACHE_SIZE = 4096

SOURCE_FILE = Path(__file__).parent / "data" / "knowledge_source.json"
DEFAULT_FILE = Path(__file__).parent / "data" / "knowledge.json"  # the packaged knowledge


def name_key(name: str, spelling: Mapping[str, str] | None = None) -> str:
    """How names are compared: case, hyphens, punctuation, accents and (with ``spelling``) British / American
    spelling ignored, so ``Age-related macular oedema`` and ``age related macular edema`` are one key, and so are
    ``Drüsen`` and ``drusen``.  Accents go as the text encoder's tokenizer drops them (NFKD, then no combining
    mark), so an accented spelling of a known name, which the model reads as the name itself, resolves to it rather
    than being prompted as an unknown name; every name of the knowledge is plain ASCII, so none collides with
    another (``tests/model/test_aliases.py``)."""
    text = unicodedata.normalize("NFKD", str(name))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[-_/]", " ", text)
    text = re.sub(r"[^\w\s+]", "", text)
    words = text.split()
    if spelling:
        words = [spelling.get(w, w) for w in words]
    return " ".join(" ".join(words).split())


@dataclass(frozen=True)
class Knowledge:
    """Read-only view of ``knowledge.json``: ``data`` is never changed once a Knowledge holds it (what is derived
    from it, the name map and the :meth:`similar_known` answers, is computed once and kept)."""

    data: dict[str, Any]
    # where it was read from (a path, or words such as "the knowledge runs/x/model.pt carries"), for messages
    source: str | None = field(default=None, compare=False)
    # the SHA-256 of the bytes it was read from (:meth:`from_bytes`), for a run's record of what it trained with
    sha256: str | None = field(default=None, compare=False)
    # similar_known answers by (name key, limit, cutoff): ~2 ms each to compute, asked per /v1/classify request
    _similar: LruCache[tuple[str, int, float], tuple[str, ...]] = field(
        default_factory=lambda: LruCache(SIMILAR_CACHE_SIZE), init=False, repr=False, compare=False
    )

    @classmethod
    def from_file(cls, path: str | Path) -> Knowledge:
        path = Path(path)
        return cls.from_data(read_json(path, "knowledge file", ArtifactError), f"knowledge file {path}", str(path))

    @classmethod
    def from_bytes(cls, content: bytes, what: str, source: str | None = None, sha256: str | None = None) -> Knowledge:
        """``knowledge.json``'s bytes (a file's, or the copy a checkpoint carries) parsed and checked as
        :meth:`from_data`; the knowledge keeps their SHA-256 (``sha256``).  Given ``sha256``, the digest recorded for
        these bytes, it is checked first: bytes that differ are damaged, whatever they parse to.  An
        :class:`ArtifactError` names ``what``."""
        digest = hashlib.sha256(content).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ArtifactError(f"{what} does not match its recorded SHA-256: it is damaged")
        try:
            data = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ArtifactError(f"{what} is not valid JSON: {err}") from None
        return cls.from_data(data, what, source, digest)

    @classmethod
    def from_data(cls, data: Any, what: str, source: str | None = None, sha256: str | None = None) -> Knowledge:
        """``data`` (parsed ``knowledge.json``) checked as a reader needs it; :class:`ArtifactError` names ``what``
        (e.g. ``knowledge file PATH``) and the first thing missing."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{what} is a JSON {type(data).__name__}, not an object")
        for key in ("templates", "categories", "category_sets", "modality_prompts"):
            if key not in data:
                raise ArtifactError(f"{what} lacks the {key!r} section")
        fmt = data.get("format", 1)
        if not isinstance(fmt, int) or fmt > KNOWLEDGE_FORMAT:
            raise ArtifactError(f"{what} has format {fmt!r}; this version reads formats 1 to {KNOWLEDGE_FORMAT}")
        return cls(data, source, sha256)

    @classmethod
    def default(cls) -> Knowledge:
        """The knowledge shipped with the package (``model/data/knowledge.json``)."""
        return cls.from_file(DEFAULT_FILE)

    @property
    def modalities(self) -> list[str]:
        return list(self.data["category_sets"])

    def category_set(self, modality: str) -> list[str]:
        try:
            return list(self.data["category_sets"][modality])
        except KeyError as err:
            raise ConfigError(f"unknown modality {modality!r}; known: {', '.join(self.modalities)}") from err

    def task(self, name: str) -> list[str]:
        tasks = self.data.get("tasks", {})
        if name not in tasks:
            raise ConfigError(f"unknown task {name!r}; known: {', '.join(tasks)}")
        return list(tasks[name]["categories"])

    # ------------------------------------------------------------------------------------------ names
    @property
    def categories(self) -> list[str]:
        return list(self.data["categories"])

    def key(self, name: str) -> str:
        """What two names that mean the same share: :func:`name_key` with this knowledge's spelling variants."""
        return name_key(name, self.data.get("spelling") or {})

    @cached_property
    def _names(self) -> dict[str, str]:
        """Every name that resolves (category names, their aliases, abbreviations) -> its category.  A category's
        own name wins over another's alias (``keepfit knowledge`` refuses such a clash; a hand-edited file might
        not)."""
        categories = self.data["categories"]
        names: dict[str, str] = {}
        for name in categories:
            names.setdefault(self.key(name), name)
        for name, entry in categories.items():
            for words in (entry.get("aliases") or {}).values():
                for alias in words:
                    names.setdefault(self.key(alias), name)
        # format 1: abbreviation -> full name (format 2 also lists them as aliases)
        for abbreviation, full in self.data.get("abbreviations", {}).items():
            target = names.get(self.key(str(full)))
            if target is not None:
                names.setdefault(self.key(abbreviation), target)
        return names

    def canonical(self, category: str) -> str:
        """The category a name means: case, hyphens, spelling variants, aliases and abbreviations (``DR``,
        ``healthy``, ``normal fundus``...) resolved; an unknown name comes back with its spaces tidied."""
        name = " ".join(str(category).strip().split())
        return self._names.get(self.key(name), name)

    def is_known(self, category: str) -> bool:
        return self.key(category) in self._names

    def aliases(self, category: str, modality: str | None = None) -> list[str]:
        """Other names of a category: those for ``modality`` (and every modality), or all with ``None``."""
        entry = self.data["categories"].get(self.canonical(category)) or {}
        by_mod: dict[str, list[str]] = entry.get("aliases") or {}
        keys = list(by_mod) if modality is None else [ANY, modality]
        return list(dict.fromkeys(a for k in keys for a in by_mod.get(k, [])))

    def named_modalities(self, name: str) -> list[str]:
        """The modalities a known name is an alias for alone (``normal angiogram``: FFA; ``healthy OCT``: OCT);
        empty for a category's own name, an abbreviation and an alias of every modality."""
        entry = self.data["categories"].get(self.canonical(name)) or {}
        wanted = self.key(name)
        return [
            modality
            for modality, aliases in (entry.get("aliases") or {}).items()
            if modality != ANY and any(self.key(alias) == wanted for alias in aliases)
        ]

    def similar_known(self, name: str, limit: int = 3, cutoff: float = 0.8) -> list[str]:
        """Known categories whose name or alias resembles ``name`` (a typo, a word more or less), best first.
        Suggestions only: an unknown name is never replaced by one of them.  Each answer is computed once per name
        key (names that differ only as :meth:`key` ignores share it) and kept in a bounded LRU."""
        key = self.key(name)
        if not key or key in self._names:
            return []
        cached = self._similar.get((key, limit, cutoff))
        if cached is None:
            cached = self._similar.put((key, limit, cutoff), tuple(self._similar_known(key, limit, cutoff)))
        return list(cached)

    def _similar_known(self, key: str, limit: int, cutoff: float) -> list[str]:
        """:meth:`similar_known` of an unknown name's key, uncached."""
        words = set(key.split())
        scored: dict[str, float] = {}
        matcher = difflib.SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(key)  # analysed once, compared with every known name
        for other, category in self._names.items():
            matcher.set_seq1(other)
            # the cheap upper bounds first: most names are far off
            close = matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff
            score = matcher.ratio() if close else 0.0
            theirs = set(other.split())
            shared = words & theirs
            if shared and (shared == words or shared == theirs) and any(len(w) > 3 for w in shared):
                # one name contains the other's words ("myopia" / "pathologic myopia")
                score = max(score, 0.75 + 0.2 * len(shared) / max(len(words), len(theirs)))
            if score >= cutoff and score > scored.get(category, 0.0):
                scored[category] = score
        ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))
        return [category for category, _ in ranked[:limit]]

    # ---------------------------------------------------------------------------------------- prompts
    def descriptions(self, category: str, modality: str) -> list[str]:
        """Expert descriptions of a category for a modality; the name itself for an unknown category."""
        name = self.canonical(category)
        entry = self.data["categories"].get(name)
        if not entry:
            return [name]
        by_mod = entry["descriptions"]
        return list(by_mod.get(modality) or by_mod.get(ANY) or [name])

    def template(self, modality: str) -> str:
        try:
            return str(self.data["templates"][modality])
        except KeyError as err:
            raise ConfigError(f"unknown modality {modality!r}; known: {', '.join(self.modalities)}") from err

    def open_templates(self, modality: str) -> list[str]:
        """Templates for a name the knowledge does not know (format 1 files: the modality's one template)."""
        plain = self.template(modality)
        return list((self.data.get("open_templates") or {}).get(modality) or [plain])

    def prompts(self, category: str, modality: str) -> list[str]:
        """A known category (or alias): one prompt per expert description.  An unknown name: the name inside
        each open-vocabulary template (a prompt ensemble, never a silent substitute)."""
        name = self.canonical(category)
        if name in self.data["categories"]:
            template = self.template(modality)
            return [template.format(d) for d in self.descriptions(name, modality)]
        return [t.format(name) for t in self.open_templates(modality)]

    def modality_prompts(self) -> dict[str, list[str]]:
        return {m: list(p) for m, p in self.data["modality_prompts"].items()}

    def caption(self, labels: list[str], modality: str, max_descriptions: int = 2) -> str:
        """A rich caption from all labels of an image plus their expert descriptions (the default elite text)."""
        parts = []
        for label in labels:
            descs = [d for d in self.descriptions(label, modality) if d.lower() != label.lower()]
            text = label if not descs else f"{label}: {', '.join(descs[:max_descriptions])}"
            parts.append(text)
        return self.template(modality).format("; ".join(parts)) + "."


def _attach_aliases(categories: dict[str, Any], source: dict[str, Any], abbreviations: dict[str, str],
                    spelling: dict[str, str], path: Path) -> None:
    """Each category's ``aliases`` from ``aliases.json`` plus the abbreviations of its name; refuses an alias
    of an unknown category, of an unknown modality, that names another category or that two categories claim."""
    owner = {name_key(name, spelling): name for name in categories}
    if len(owner) != len(categories):
        clash = [n for n in categories if owner[name_key(n, spelling)] != n]
        raise ConfigError(f"{path}: categories {clash} have the same name as another once spelling is ignored")
    claimed: dict[str, str] = {}

    def add(category: str, modality: str, alias: str) -> None:
        key = name_key(alias, spelling)
        if not key:
            raise ConfigError(f"{path}: an empty alias of {category!r}")
        if key in owner and owner[key] != category:
            raise ConfigError(f"{path}: alias {alias!r} of {category!r} is the name of category {owner[key]!r}")
        if key in claimed and claimed[key] != category:
            raise ConfigError(f"{path}: alias {alias!r} is claimed by {claimed[key]!r} and {category!r}")
        if key in owner or key in claimed:
            return  # the category's own name, or already listed
        claimed[key] = category
        categories[category].setdefault("aliases", {}).setdefault(modality, []).append(alias)

    for category, by_modality in source.items():
        if category not in categories:
            raise ConfigError(f"{path}: aliases of {category!r}, which is not a knowledge category")
        if not isinstance(by_modality, dict):
            raise ConfigError(f"{path}: aliases of {category!r} must map modality ('any', CFP...) to names")
        for modality, words in by_modality.items():
            if modality != ANY and modality not in MODALITIES:
                raise ConfigError(f"{path}: aliases of {category!r}: unknown modality {modality!r}")
            for alias in words:
                add(category, modality, str(alias))
    for abbreviation, full in abbreviations.items():
        target = owner.get(name_key(full, spelling)) or claimed.get(name_key(full, spelling))
        if target is not None:
            add(target, ANY, abbreviation)


def build_knowledge(
    dictionary_path: str | Path, aliases_path: str | Path = ALIASES_FILE, source_path: str | Path = SOURCE_FILE
) -> dict[str, Any]:
    """FLAIR's dictionary + our knowledge source (``model/data/knowledge_source.json``: templates, modality
    prompts, categories and descriptions, abbreviations, category sets, tasks) + ``aliases.json`` -> the
    ``knowledge.json`` structure."""
    ours = read_json(source_path, "knowledge source")
    path = Path(dictionary_path)
    source = read_json(path, "knowledge dictionary")
    if not isinstance(source, dict):
        raise ConfigError(f"knowledge dictionary {path} is a JSON {type(source).__name__}, not an object")
    definitions = source.get("definitions", source)
    if not isinstance(definitions, dict) or not definitions:
        raise ConfigError(f"knowledge dictionary {path} has no 'definitions' mapping")
    categories: dict[str, Any] = {}
    for name, phrases in definitions.items():
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, list):
            raise ConfigError(
                f"knowledge dictionary {path}: {str(name)[:80]!r} maps to a {type(phrases).__name__}, not a list "
                "of descriptions"
            )
        phrases = [str(p) for p in phrases if str(p).strip()]
        if name.lower() not in (p.lower() for p in phrases):
            phrases = [name, *phrases]
        categories[name] = {"descriptions": {ANY: phrases}, "source": "FLAIR"}
    for name, by_modality in ours["extensions"].items():
        entry = categories.setdefault(name, {"descriptions": {}, "source": "keepfit"})
        entry["descriptions"].update({k: list(v) for k, v in by_modality.items()})
        if entry.get("source") == "FLAIR":
            entry["source"] = "FLAIR+keepfit"
    for modality, names in ours["category_sets"].items():
        for name in names:
            if name not in categories:
                raise ConfigError(f"category {name!r} of the {modality} set has no descriptions")
    # FLAIR maps full name -> abbreviation; we store abbreviation -> full name, plus common clinical ones.
    abbreviations = {v: k for k, v in source.get("abbreviations", {}).items() if isinstance(v, str)}
    abbreviations.update(ours["abbreviations"])
    apath = Path(aliases_path)
    words = read_json(apath, "aliases file")
    # both keys present: an empty object (or a file of another kind) built knowledge with no aliases, status 0
    if not isinstance(words, dict) or not all(isinstance(words.get(k, None), dict) for k in ("spelling", "aliases")):
        raise ConfigError(f"aliases file {apath} must be a JSON object with 'aliases' and 'spelling' objects")
    spelling = {str(k).lower(): str(v).lower() for k, v in (words.get("spelling") or {}).items()}
    _attach_aliases(categories, words.get("aliases") or {}, abbreviations, spelling, apath)
    return {
        "format": KNOWLEDGE_FORMAT,
        "source": "FLAIR knowledge dictionary (Apache-2.0, github.com/jusiro/FLAIR) + keepfit extensions",
        "templates": dict(ours["templates"]),
        "open_templates": {m: list(t) for m, t in ours["open_templates"].items()},
        "modality_prompts": {m: list(p) for m, p in ours["modality_prompts"].items()},
        "category_sets": {m: list(ours["category_sets"][m]) for m in MODALITIES},
        "tasks": ours["tasks"],
        "categories": categories,
        "abbreviations": abbreviations,
        "spelling": spelling,
    }


# Negations other than a leading "no" or "without", which the text encoder reads as negations (the knowledge
# lists "no DR", "without DME", "DR absent" as names of their categories).  Written another way, "negative for
# DR", "macular edema not present", a negation may be read as the finding: a search for "macular edema not
# present" found no photograph without DME among its first 10 of the test split's
# (python -m index.benchmarks.text_queries).  Only a name that is one negated finding is recognised: a negation
# before the finding or after it, the finding without negations, conjunctions or commas of its own ("drusen but
# not CNV" and "cotton wool spots not near the fovea" say more than an absence, and are left alone).
_NEGATED_BEFORE = re.compile(
    r"^(?:negative for|no evidence of|absence of|free of|lack of|not)\s+(?P<finding>.+)$", re.IGNORECASE
)
_NEGATED_AFTER = re.compile(
    r"^(?P<finding>.+?)[\s,:;-]+(?:not (?:present|seen|detected|found|visible)|absent|excluded|ruled out|negative|"
    r"nil|none)\.?$",
    re.IGNORECASE,
)
_NOT_ONE_FINDING = re.compile(r"\b(?:not|no|but|and|or|nor|neither|none|negative|absent|without)\b|[,;:]", re.IGNORECASE)


def negated_finding(knowledge: Knowledge, name: str) -> tuple[str, str | None] | None:
    """For an unknown name that is one finding negated otherwise than by a leading "no" (``negative for DR``,
    ``macular edema not present``, ``glaucoma ruled out``): the finding, and the known category that names its
    absence (``("DR", "no diabetic retinopathy")``), or ``None`` for the second where the knowledge has none
    (then ``no <finding>`` is what to write).  ``None`` for a known name (``DR absent`` resolves to its category),
    for a name that says more than one negated finding, and for ``not`` before an unknown finding (``not an
    angiogram`` says what the image is not, not an absent finding)."""
    text = " ".join(name.split()).strip(" .")
    if knowledge.is_known(text):
        return None
    before, after = _NEGATED_BEFORE.match(text), _NEGATED_AFTER.match(text)
    match = before or after
    if match is None:
        return None
    finding = re.sub(r"^(?:an?|the)\s+", "", match.group("finding").strip(" .,:;-"), flags=re.IGNORECASE)
    if not finding or _NOT_ONE_FINDING.search(finding):
        return None
    known = knowledge.canonical(finding) if knowledge.is_known(finding) else None
    if known is None and before is not None and text.lower().startswith("not "):
        return None
    absent = f"no {known}" if known else None
    return finding, knowledge.canonical(absent) if absent and knowledge.is_known(absent) else None


def negation_warning(knowledge: Knowledge, names: list[str], what: str) -> list[dict[str, str]]:
    """``negated_category`` (``what="category"``: zero-shot category names; ``"prior"``: the prior texts of a
    few-shot classifier's categories) / ``negated_query`` (``"query"``: a search text) for those of ``names``
    that negate a finding in words the text encoder does not read as a negation (:func:`negated_finding`),
    naming what to write instead.  The service's answers and ``keepfit index search`` share it."""
    found = [(name, hit) for name in names if (hit := negated_finding(knowledge, name)) is not None]
    if not found:
        return []
    advice = "; ".join(
        f"{name!r}: write {absent!r}" if absent else f"{name!r}: write 'no {finding}'" for name, (finding, absent) in found
    )
    if what == "query":
        message = (
            f"the query negates a finding in words this text encoder does not read as a negation (not, negative, "
            f"absent...): it finds images much as it would for the finding itself. {advice}"
        )
        return [{"code": "negated_query", "message": message}]
    if what == "prior":  # a few-shot classifier's prior texts (its categories' text, else their labels)
        message = (
            f"the prior text of {'a category negates' if len(found) == 1 else 'categories negate'} a finding in "
            "words this text encoder does not read as a negation (not, negative, absent...): the zero-shot prior "
            f"pulls such a category towards the finding itself; give it an English 'text' that says it. {advice}"
        )
        return [{"code": "negated_category", "message": message}]
    message = (
        f"{'a category negates' if len(found) == 1 else 'categories negate'} a finding in words this text encoder "
        f"does not read as a negation (not, negative, absent...): it scores such a name much as it scores the "
        f"finding itself, so the probabilities do not answer the question asked. {advice}"
    )
    return [{"code": "negated_category", "message": message}]


def query_suggestions(knowledge: Knowledge, text: str) -> list[str]:
    """Known categories to offer beside a search for ``text`` that names none (``query.similar_known``):
    :meth:`Knowledge.similar_known`, but for a negated finding (:func:`negated_finding`) the category of its
    absence, or nothing: the finding itself ("macular edema" for "macular edema not present") is the opposite of
    what was asked.  Empty for a known name."""
    negated = negated_finding(knowledge, text)
    if negated is not None:
        return [negated[1]] if negated[1] else []
    return knowledge.similar_known(text)
