"""Expert knowledge as data: category sets per modality, expert descriptions and prompt templates.

``knowledge.json`` (shipped in every artifact) is built by :func:`build_knowledge` from FLAIR's knowledge
dictionary (``../shared/data/text/knowledge_dictionary.json``, Apache-2.0) extended with the categories of our
data and modality-specific descriptions (an OCT shows diabetic macular edema differently from a photograph).
A class's zero-shot text embedding is the mean of the embeddings of its prompts, one per description.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import MODALITIES
from model.errors import ArtifactError, ConfigError

logger = logging.getLogger(__name__)

KNOWLEDGE_FORMAT = 1
ANY = "any"

TEMPLATES: dict[str, str] = {
    "CFP": "A fundus photograph of {}",
    "FFA": "A fluorescein angiogram showing {}",
    "OCT": "An optical coherence tomography scan of the macula showing {}",
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
    "normal": {
        # many ways of saying "nothing abnormal": a single "normal" prompt is what other cameras' healthy eyes
        # lose against (their colour and exposure differ from our training site's)
        "CFP": [
            "a normal fundus",
            "a healthy retina",
            "a normal optic disc with a healthy cup-to-disc ratio and a normal macula",
            "normal retinal vessels without haemorrhages, exudates or microaneurysms",
            "a healthy macula with a foveal reflex",
            "no abnormality of the retina, optic disc or vessels",
            "an unremarkable fundus",
        ],
        "FFA": [
            "a normal fluorescein angiogram",
            "normal retinal circulation without leakage",
            "normal filling of arteries and veins",
        ],
        "OCT": ["a normal macula", "normal retinal layers and foveal depression"],
        ANY: ["normal", "healthy"],
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


@dataclass(frozen=True)
class Knowledge:
    """Read-only view of ``knowledge.json``."""

    data: dict[str, Any]

    @classmethod
    def from_file(cls, path: str | Path) -> Knowledge:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ArtifactError(f"knowledge file not found: {path}") from err
        except json.JSONDecodeError as err:
            raise ArtifactError(f"knowledge file {path} is not valid JSON: {err}") from err
        for key in ("templates", "categories", "category_sets", "modality_prompts"):
            if key not in data:
                raise ArtifactError(f"knowledge file {path} lacks the {key!r} section")
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

    def canonical(self, category: str) -> str:
        """Case-insensitive name, with abbreviations (``DR``, ``AMD``...) expanded where known."""
        name = " ".join(category.strip().split())
        lower = name.lower()
        for known in self.data["categories"]:
            if known.lower() == lower:
                return str(known)
        # abbreviations map abbreviation -> full name
        full = {k.lower(): v for k, v in self.data.get("abbreviations", {}).items()}.get(lower)
        if isinstance(full, str) and full.lower() != lower:
            return self.canonical(full)
        return name

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

    def prompts(self, category: str, modality: str) -> list[str]:
        template = self.template(modality)
        return [template.format(d) for d in self.descriptions(category, modality)]

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


def build_knowledge(dictionary_path: str | Path) -> dict[str, Any]:
    """FLAIR's dictionary + :data:`EXTENSIONS` -> the ``knowledge.json`` structure."""
    path = Path(dictionary_path)
    try:
        source = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"knowledge dictionary not found: {path}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"knowledge dictionary {path} is not valid JSON: {err}") from err
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
    return {
        "format": KNOWLEDGE_FORMAT,
        "source": "FLAIR knowledge dictionary (Apache-2.0, github.com/jusiro/FLAIR) + keepfit extensions",
        "templates": dict(TEMPLATES),
        "modality_prompts": {m: list(p) for m, p in MODALITY_PROMPTS.items()},
        "category_sets": {m: list(CATEGORY_SETS[m]) for m in MODALITIES},
        "tasks": TASKS,
        "categories": categories,
        "abbreviations": abbreviations,
    }
