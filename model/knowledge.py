"""Expert knowledge as data: category sets per modality, expert descriptions and prompt templates.

``knowledge.json`` (shipped in every artifact) is built by :func:`build_knowledge` from FLAIR's knowledge
dictionary (``../shared/data/text/knowledge_dictionary.json``, Apache-2.0) extended with the categories of our
data and modality-specific descriptions (an OCT shows diabetic macular edema differently from a photograph).
A class's zero-shot text embedding is the mean of the embeddings of its prompts, one per description.

Clinicians word a category in many ways (``healthy``, ``no findings``, ``normal fundus``; ``DME``, ``DMO``).
``model/data/aliases.json`` lists those words per category and modality; :func:`build_knowledge` stores them in
each category's ``aliases`` field, and an alias is scored with its category's expert prompts, so every wording
of one category gives the same answer.  A name the knowledge does not know is prompted with an ensemble of
clinical sentences (:data:`OPEN_TEMPLATES`) and reported with the known categories it resembles.

Over 500 lines: most of it is the knowledge's source data (categories, aliases and prompt templates per modality),
the rest its small API.
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from model.config import MODALITIES
from model.errors import ArtifactError, ConfigError
from model.files import read_json

logger = logging.getLogger(__name__)

# 2: categories carry ``aliases``; ``spelling`` and ``open_templates`` sections (format-1 files still load)
KNOWLEDGE_FORMAT = 2
ANY = "any"
ALIASES_FILE = Path(__file__).parent / "data" / "aliases.json"

TEMPLATES: dict[str, str] = {
    "CFP": "A fundus photograph of {}",
    "FFA": "A fluorescein angiogram showing {}",
    "OCT": "An optical coherence tomography scan of the macula showing {}",
}

# A name the knowledge does not know: the name inside several clinical sentences, averaged like a known class's
# prompts (the first is the modality's plain template).
OPEN_TEMPLATES: dict[str, list[str]] = {
    "CFP": [
        "A fundus photograph of {}",
        "A colour fundus photograph showing {}",
        "A retinal photograph of an eye with {}",
        "Fundus photography: findings consistent with {}",
        "A fundus image of a patient diagnosed with {}",
    ],
    "FFA": [
        "A fluorescein angiogram showing {}",
        "A fundus fluorescein angiography image of an eye with {}",
        "Angiographic findings consistent with {}",
        "A fluorescein angiogram of a patient diagnosed with {}",
    ],
    "OCT": [
        "An optical coherence tomography scan of the macula showing {}",
        "An OCT B-scan of an eye with {}",
        "OCT findings consistent with {}",
        "An optical coherence tomography image of a patient diagnosed with {}",
    ],
}

# Prompts that describe the modality itself, for modality recognition (``modality=auto``).
MODALITY_PROMPTS: dict[str, list[str]] = {
    "CFP": [
        "A colour fundus photograph of the retina",
        "A color fundus image showing the optic disc, macula and retinal vessels",
        "A retinal photograph with an orange-red background",
    ],
    "FFA": [
        "A fluorescein angiogram of the retina",
        "A grayscale fundus fluorescein angiography image with bright vessels",
        "An angiogram showing dye filling the retinal vessels",
    ],
    "OCT": [
        "An optical coherence tomography B-scan of the macula",
        "An OCT cross-section showing the retinal layers",
        "A grayscale tomographic scan of the retina in cross-section",
    ],
}

# Our categories and modality-specific descriptions, on top of FLAIR's dictionary (which has CFP phrasing).
EXTENSIONS: dict[str, dict[str, list[str]]] = {
    "diabetic macular edema": {
        "CFP": [
            "diabetic macular edema",
            "hard exudates near the macula",
            "retinal thickening near the macula",
            "circinate exudates around the fovea",
        ],
        "OCT": [
            "diabetic macular edema",
            "retinal thickening with intraretinal cystoid fluid spaces",
            "hyporeflective cysts in the macula",
            "subretinal fluid and loss of the foveal depression",
        ],
        ANY: ["diabetic macular edema", "macular thickening with fluid"],
    },
    "no diabetic macular edema": {
        "CFP": ["no diabetic macular edema", "a macula without exudates or thickening"],
        "OCT": [
            "no diabetic macular edema",
            "a normal foveal depression without fluid",
            "retinal layers of normal thickness without cysts",
        ],
        ANY: ["no diabetic macular edema", "a dry macula without thickening"],
    },
    "non-proliferative diabetic retinopathy": {
        "CFP": [
            "non-proliferative diabetic retinopathy",
            "microaneurysms",
            "dot and blot haemorrhages",
            "hard exudates",
            "cotton wool spots",
        ],
        "OCT": [
            "non-proliferative diabetic retinopathy",
            "hyperreflective foci in the inner retina",
            "mild retinal thickening",
        ],
        ANY: ["non-proliferative diabetic retinopathy", "microaneurysms and haemorrhages"],
    },
    "proliferative diabetic retinopathy": {
        "CFP": [
            "proliferative diabetic retinopathy",
            "neovascularization",
            "preretinal or vitreous haemorrhage",
            "fibrovascular proliferation",
            "laser scars",
        ],
        "OCT": [
            "proliferative diabetic retinopathy",
            "epiretinal fibrovascular membrane",
            "vitreoretinal traction",
        ],
        "FFA": [
            "proliferative diabetic retinopathy",
            "leakage from neovascularization",
            "capillary non-perfusion",
        ],
        ANY: ["proliferative diabetic retinopathy", "neovascularization"],
    },
    "no diabetic retinopathy": {
        "OCT": ["no diabetic retinopathy", "normal retinal layers", "a normal foveal contour"],
    },
    "branch retinal vein occlusion": {
        "FFA": [
            "branch retinal vein occlusion",
            "delayed filling of a branch retinal vein",
            "blocked fluorescence from haemorrhages in one quadrant",
            "leakage and dilated tortuous veins in one sector",
        ],
        "CFP": [
            "branch retinal vein occlusion",
            "flame haemorrhages in one quadrant along a vein",
            "dilated tortuous vein with cotton wool spots",
        ],
    },
    "non-perfusion area": {
        "FFA": [
            "retinal non-perfusion area",
            "capillary dropout with dark hypofluorescent areas",
            "areas of absent capillary filling",
        ],
        ANY: ["retinal non-perfusion area", "capillary dropout"],
    },
    "no non-perfusion area": {
        "FFA": [
            "no non-perfusion area",
            "complete capillary filling",
            "a perfused capillary bed without dark areas",
        ],
        ANY: ["no non-perfusion area", "complete capillary perfusion"],
    },
    # Many ways of saying "nothing is wrong", per modality, so that a healthy eye from another camera still finds
    # its class (with the bare words "normal" and "healthy" it was often called diseased).  Phrased positively:
    # a negated finding ("no haemorrhages") embeds close to the finding itself and pulled the class towards
    # disease (validation split, normal vs DR on photographs: 0.82 with such phrases, 0.91 without).
    "normal": {
        # many positive ways of saying "nothing abnormal" (negated findings, "no haemorrhages...", embed near the
        # finding itself): a single "normal" prompt is what other cameras' healthy eyes lose against
        "CFP": [
            "normal",
            "healthy",
            "a healthy retina without lesions",
            "normal optic disc with a healthy cup-to-disc ratio",
            "a pink optic disc with sharp margins",
            "normal macula with a foveal reflex",
            "retinal vessels of normal calibre and course",
            "a normal fundus with clear media",
        ],
        "FFA": [
            "a normal fluorescein angiogram",
            "normal retinal circulation without leakage",
            "normal filling of arteries and veins",
            "a normal foveal avascular zone",
            "uniform background choroidal fluorescence",
            "a normal arteriovenous transit time",
        ],
        "OCT": [
            "a normal macula",
            "normal retinal layers and foveal depression",
            "a normal foveal contour",
            "retinal layers of normal thickness and reflectivity",
            "an intact ellipsoid zone and retinal pigment epithelium",
            "a smooth foveal pit with regular retinal lamination",
        ],
        ANY: ["normal", "healthy", "a healthy eye", "a normal retina"],
    },
    # the International Clinical DR scale and diabetic maculopathy, as a second site grades them
    "mild diabetic retinopathy": {
        "CFP": ["mild non-proliferative diabetic retinopathy", "only a few microaneurysms",
                "isolated microaneurysms without haemorrhages or exudates"],
    },
    "moderate diabetic retinopathy": {
        "CFP": ["moderate non-proliferative diabetic retinopathy", "dot and blot haemorrhages and microaneurysms",
                "hard exudates and scattered haemorrhages", "cotton wool spots"],
    },
    "severe diabetic retinopathy": {
        "CFP": ["severe non-proliferative diabetic retinopathy", "many intraretinal haemorrhages in all quadrants",
                "venous beading", "intraretinal microvascular abnormalities"],
    },
    "advanced diabetic eye disease": {
        "CFP": ["advanced diabetic eye disease", "tractional retinal detachment", "dense vitreous haemorrhage",
                "extensive fibrovascular proliferation"],
    },
    "diabetic maculopathy": {
        "CFP": ["diabetic maculopathy", "hard exudates within one disc diameter of the fovea",
                "haemorrhages and exudates at the macula", "retinal thickening at the centre of the macula"],
    },
    "no diabetic maculopathy": {
        "CFP": ["no diabetic maculopathy", "a macula free of exudates and haemorrhages",
                "a normal macula with a foveal reflex"],
    },
    "referable diabetic retinopathy": {
        "CFP": ["referable diabetic retinopathy", "moderate or worse diabetic retinopathy",
                "many haemorrhages and hard exudates", "diabetic maculopathy with exudates near the fovea",
                "neovascularization or vitreous haemorrhage"],
    },
    "no referable diabetic retinopathy": {
        "CFP": ["no referable diabetic retinopathy", "no or only mild diabetic retinopathy",
                "a healthy retina without haemorrhages or exudates", "at most a few microaneurysms"],
    },
    "arterial phase": {
        "FFA": [
            "the arterial phase",
            "dye filling the retinal arteries while the veins are still dark",
            "early angiogram with bright arteries",
        ],
    },
    "venous phase": {
        "FFA": [
            "the venous phase",
            "dye filling both retinal arteries and veins",
            "late angiogram with bright veins",
        ],
    },
}

ABBREVIATIONS: dict[str, str] = {
    "AMD": "age related macular degeneration",
    "DR": "diabetic retinopathy",
    "DME": "diabetic macular edema",
    "NPDR": "non-proliferative diabetic retinopathy",
    "PDR": "proliferative diabetic retinopathy",
    "BRVO": "branch retinal vein occlusion",
    "CRVO": "central retinal vein occlusion",
    "NPA": "non-perfusion area",
    "CSR": "central serous retinopathy",
    "ERM": "epiretinal membrane",
    # the International Clinical DR scale's spelled-out grades
    "mild non-proliferative diabetic retinopathy": "mild diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy": "moderate diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy": "severe diabetic retinopathy",
    "RDR": "referable diabetic retinopathy",
}

CATEGORY_SETS: dict[str, list[str]] = {
    "CFP": [
        "normal",
        "diabetic macular edema",
        "non-proliferative diabetic retinopathy",
        "proliferative diabetic retinopathy",
        "glaucoma",
        "age related macular degeneration",
        "pathologic myopia",
        "cataract",
        "branch retinal vein occlusion",
        "central retinal vein occlusion",
        "hypertensive retinopathy",
    ],
    "FFA": [
        "normal",
        "branch retinal vein occlusion",
        "non-perfusion area",
        "proliferative diabetic retinopathy",
        "central retinal vein occlusion",
    ],
    "OCT": [
        "normal",
        "diabetic macular edema",
        "no diabetic macular edema",
    ],
}

# Named evaluation / front-end tasks: a closed set of mutually exclusive categories.
TASKS: dict[str, dict[str, Any]] = {
    "dme": {"categories": ["diabetic macular edema", "no diabetic macular edema"], "modalities": ["CFP", "OCT"]},
    "dr": {
        "categories": [
            "no diabetic retinopathy",
            "non-proliferative diabetic retinopathy",
            "proliferative diabetic retinopathy",
        ],
        "modalities": ["CFP", "OCT"],
    },
    "ffa_diagnosis": {
        "categories": ["normal", "branch retinal vein occlusion", "non-perfusion area", "no non-perfusion area"],
        "modalities": ["FFA"],
    },
    "ffa_phase": {"categories": ["arterial phase", "venous phase"], "modalities": ["FFA"]},
    "dr_icdr": {
        "categories": [
            "no diabetic retinopathy",
            "mild diabetic retinopathy",
            "moderate diabetic retinopathy",
            "severe diabetic retinopathy",
            "proliferative diabetic retinopathy",
        ],
        "modalities": ["CFP"],
    },
    "referable_dr": {
        "categories": ["no referable diabetic retinopathy", "referable diabetic retinopathy"],
        "modalities": ["CFP"],
    },
    "maculopathy": {"categories": ["no diabetic maculopathy", "diabetic maculopathy"], "modalities": ["CFP"]},
}


def name_key(name: str, spelling: Mapping[str, str] | None = None) -> str:
    """How names are compared: case, hyphens, punctuation and (with ``spelling``) British / American spelling
    ignored, so ``Age-related macular oedema`` and ``age related macular edema`` are one key."""
    text = unicodedata.normalize("NFKC", str(name)).lower()
    text = re.sub(r"[-_/]", " ", text)
    text = re.sub(r"[^\w\s+]", "", text)
    words = text.split()
    if spelling:
        words = [spelling.get(w, w) for w in words]
    return " ".join(" ".join(words).split())


@dataclass(frozen=True)
class Knowledge:
    """Read-only view of ``knowledge.json``."""

    data: dict[str, Any]

    @classmethod
    def from_file(cls, path: str | Path) -> Knowledge:
        path = Path(path)
        data = read_json(path, "knowledge file", ArtifactError)
        for key in ("templates", "categories", "category_sets", "modality_prompts"):
            if key not in data:
                raise ArtifactError(f"knowledge file {path} lacks the {key!r} section")
        fmt = data.get("format", 1)
        if not isinstance(fmt, int) or fmt > KNOWLEDGE_FORMAT:
            raise ArtifactError(
                f"knowledge file {path} has format {fmt!r}; this version reads formats 1 to {KNOWLEDGE_FORMAT}"
            )
        return cls(data)

    @classmethod
    def default(cls) -> Knowledge:
        """The knowledge shipped with the package (``model/data/knowledge.json``)."""
        return cls.from_file(Path(__file__).parent / "data" / "knowledge.json")

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

    def _key(self, name: str) -> str:
        return name_key(name, self.data.get("spelling") or {})

    @cached_property
    def _names(self) -> dict[str, str]:
        """Every name that resolves (category names, their aliases, abbreviations) -> its category.  A category's
        own name wins over another's alias (``keepfit knowledge`` refuses such a clash; a hand-edited file might
        not)."""
        categories = self.data["categories"]
        names: dict[str, str] = {}
        for name in categories:
            names.setdefault(self._key(name), name)
        for name, entry in categories.items():
            for words in (entry.get("aliases") or {}).values():
                for alias in words:
                    names.setdefault(self._key(alias), name)
        # format 1: abbreviation -> full name (format 2 also lists them as aliases)
        for abbreviation, full in self.data.get("abbreviations", {}).items():
            target = names.get(self._key(str(full)))
            if target is not None:
                names.setdefault(self._key(abbreviation), target)
        return names

    def canonical(self, category: str) -> str:
        """The category a name means: case, hyphens, spelling variants, aliases and abbreviations (``DR``,
        ``healthy``, ``normal fundus``...) resolved; an unknown name comes back with its spaces tidied."""
        name = " ".join(str(category).strip().split())
        return self._names.get(self._key(name), name)

    def is_known(self, category: str) -> bool:
        return self._key(category) in self._names

    def aliases(self, category: str, modality: str | None = None) -> list[str]:
        """Other names of a category: those for ``modality`` (and every modality), or all with ``None``."""
        entry = self.data["categories"].get(self.canonical(category)) or {}
        by_mod: dict[str, list[str]] = entry.get("aliases") or {}
        keys = list(by_mod) if modality is None else [ANY, modality]
        return list(dict.fromkeys(a for k in keys for a in by_mod.get(k, [])))

    def similar_known(self, name: str, limit: int = 3, cutoff: float = 0.8) -> list[str]:
        """Known categories whose name or alias resembles ``name`` (a typo, a word more or less), best first.
        Suggestions only: an unknown name is never replaced by one of them."""
        key = self._key(name)
        if not key or key in self._names:
            return []
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


def build_knowledge(dictionary_path: str | Path, aliases_path: str | Path = ALIASES_FILE) -> dict[str, Any]:
    """FLAIR's dictionary + :data:`EXTENSIONS` + ``aliases.json`` -> the ``knowledge.json`` structure."""
    path = Path(dictionary_path)
    source = read_json(path, "knowledge dictionary")
    definitions = source.get("definitions", source)
    if not isinstance(definitions, dict) or not definitions:
        raise ConfigError(f"knowledge dictionary {path} has no 'definitions' mapping")
    categories: dict[str, Any] = {}
    for name, phrases in definitions.items():
        phrases = [str(p) for p in phrases if str(p).strip()]
        if name.lower() not in (p.lower() for p in phrases):
            phrases = [name, *phrases]
        categories[name] = {"descriptions": {ANY: phrases}, "source": "FLAIR"}
    for name, by_modality in EXTENSIONS.items():
        entry = categories.setdefault(name, {"descriptions": {}, "source": "keepfit"})
        entry["descriptions"].update({k: list(v) for k, v in by_modality.items()})
        if entry.get("source") == "FLAIR":
            entry["source"] = "FLAIR+keepfit"
    for modality, names in CATEGORY_SETS.items():
        for name in names:
            if name not in categories:
                raise ConfigError(f"category {name!r} of the {modality} set has no descriptions")
    # FLAIR maps full name -> abbreviation; we store abbreviation -> full name, plus common clinical ones.
    abbreviations = {v: k for k, v in source.get("abbreviations", {}).items() if isinstance(v, str)}
    abbreviations.update(ABBREVIATIONS)
    apath = Path(aliases_path)
    words = read_json(apath, "aliases file")
    spelling = {str(k).lower(): str(v).lower() for k, v in (words.get("spelling") or {}).items()}
    _attach_aliases(categories, words.get("aliases") or {}, abbreviations, spelling, apath)
    return {
        "format": KNOWLEDGE_FORMAT,
        "source": "FLAIR knowledge dictionary (Apache-2.0, github.com/jusiro/FLAIR) + keepfit extensions",
        "templates": dict(TEMPLATES),
        "open_templates": {m: list(t) for m, t in OPEN_TEMPLATES.items()},
        "modality_prompts": {m: list(p) for m, p in MODALITY_PROMPTS.items()},
        "category_sets": {m: list(CATEGORY_SETS[m]) for m in MODALITIES},
        "tasks": TASKS,
        "categories": categories,
        "abbreviations": abbreviations,
        "spelling": spelling,
    }
