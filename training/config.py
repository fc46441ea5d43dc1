"""The training config: one typed dataclass for both stages, resolved from defaults, an optional JSON file and
command-line flags, written into the run folder and into every checkpoint.

Unknown keys are errors.  The defaults are the CPU recipe of the default model (``keepfit-v2-small``): 224 px,
the first 17 MobileNetV2 blocks frozen and their feature maps cached once per image and view, the last two
blocks, the top two MiniLM layers, the projections, the knowledge attention and the caption decoder trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import ConfigError
from model.files import atomic_write_text, read_json
from training.augment import AugmentConfig

STAGES = ("text", "hybrid")
ELITE_TEXTS = ("composed", "atlas")
# cached views per image: the feature store holds [images, views, C, h, w] in memory (fp16) and computes every
# view of every image when built; past this, more augmented copies add memory and time, not data
MAX_VIEWS = 64
STAGE_LOSSES: dict[str, tuple[str, ...]] = {"hybrid": ("public", "elite", "kt", "gen"), "text": ("mlm", "knowledge")}
LOSSES = (*STAGE_LOSSES["hybrid"], *STAGE_LOSSES["text"])


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; 0 switches a term off (its module is then not run at all).

    Stage 2: ``public`` soft-target CLIP on categorical data, ``elite`` CLIP on elite pairs, ``kt`` attention
    knowledge transfer, ``gen`` caption decoder.  Stage 1: ``mlm`` masked-language modelling, ``knowledge``
    contrastive alignment of category names and their expert descriptions.
    """

    public: float = 1.0
    elite: float = 1.0
    kt: float = 1.0
    gen: float = 0.5
    mlm: float = 1.0
    knowledge: float = 1.0

    def validate(self) -> LossWeights:
        for name in LOSSES:
            if not getattr(self, name) >= 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"loss weight {name} must be a finite number >= 0, got {getattr(self, name)}")
        return self


# what a recorded config (a run's config.json or checkpoint, an artifact manifest's ``training``) made before a
# key existed did, where that is not the key's default today: its absence reads as this value
RECORDED_BEFORE: dict[str, Any] = {"drop_held_out_copies": False}


@dataclass(frozen=True)
class TrainConfig:
    stage: str = "hybrid"
    name: str = "keepfit-v2-small"
    model: str = "keepfit-v2-small"  # a registered model config or a config JSON path
    init: str | None = None  # stage 2: a stage-1 checkpoint whose text encoder it starts from
    # data
    data_root: str | None = None  # default: $KEEPFIT_DATA_ROOT or ../shared/data
    public: tuple[str, ...] = ("cfp_oct_mx/labels.csv:dme,dr", "ffa_huapu4/labels.csv:label")
    # real expert (image, caption) pairs: a CSV path, or one relative to the data root; "none" composes every
    # elite pair from the train split instead (labels + expert descriptions)
    elite_manifest: str | None = "mm_retinal_cfp_pairs/pairs.csv"
    # compose elite pairs from the train split for the modalities the manifest has no pairs of (FFA and OCT for
    # the MM-Retinal photographs: no atlas angiograms or OCT scans are obtainable)
    elite_compose_missing: bool = True
    elite_fraction: float = 0.25
    # the composed elite set's text: "composed" (labels + expert descriptions) or "atlas" (an MM-Retinal atlas
    # caption of the same condition and modality; composed where the atlas has none, e.g. OCT)
    elite_text: str = "composed"
    holdout: tuple[str, ...] = ()  # categories whose images are left out of training entirely
    # leave out a train image that is a re-encoded copy of a val or test image of the public manifests (the shared
    # data files some under other names and patient ids); runs and artifacts recorded before this option did not
    # (RECORDED_BEFORE)
    drop_held_out_copies: bool = True
    corpus: str | None = None  # stage 1 (default: <data_root>/text/ophthalmic_corpus.jsonl)
    # knowledge.json whose expert descriptions, aliases and templates word the captions, prompts and stage 1's
    # knowledge pairs (a clinic's, built by keepfit knowledge); None: the packaged model/data/knowledge.json
    knowledge: str | None = None
    corpus_holdout: float = 0.05
    # schedule
    steps: int = 200
    batch_size: int = 64
    elite_batch_size: int = 32
    lr: float = 1e-4  # pretrained weights
    head_lr: float = 1e-3  # new weights: projections, knowledge attention, decoder, MLM head, temperature
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    balance_alpha: float = 0.5  # sample weight of an image ~ 1 / (size of its label set's group) ** alpha
    modality_caption_prob: float = 0.1  # a public image's caption names its modality instead of a label
    # how often training sees the aliases (``healthy`` for ``normal``, ``DMO`` for ``diabetic macular edema``):
    # stage 1, the share of knowledge pairs that pair an alias with a description; stage 2, the share of public
    # captions that word their label by an alias
    alias_prob: float = 0.25
    kt_same_modality: bool = False  # knowledge transfer: a public image attends only to elite pairs of its modality
    # what trains
    vision_freeze_blocks: int | None = None  # None: 17 for mobilenet_v2, 1 for tiny_cnn
    text_trainable_layers: int | None = None  # None: 2 (stage 2) or 3 (stage 1) of MiniLM's 6; 1 for tiny
    views: int = 5  # cached views per training image: the plain one plus (views - 1) augmented ones
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask_prob: float = 0.15
    # stage 1: the new MLM head is fitted alone for this many steps before MLM gradients reach the pretrained
    # text layers (a random head's gradients would otherwise scramble the sentence encoder it starts from)
    mlm_head_warmup: int = 0
    max_text_tokens: int = 64
    losses: LossWeights = field(default_factory=LossWeights)
    # bookkeeping
    eval_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0  # model initialisation, batch sampling, dropout
    data_seed: int = 0  # the data a run sees: elite subset, cached augmented views, held-out corpus lines
    select: str = "last"  # which weights model.pt holds: "last" (end of the schedule) or "best" (validation)
    device: str = "auto"
    amp: bool = True  # bf16/fp16 autocast on CUDA only
    cache_dir: str | None = None  # default: .cache beside the run's folder (runs/.cache for runs/<name>)

    def validate(self) -> TrainConfig:
        for f in dataclasses.fields(self):  # a nan learning rate trained and saved NaN weights, exit 0
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        run = Path(self.name)  # the run folder is <runs-dir>/<name>: "" or "." was the runs folder itself
        if not self.name.strip() or not run.parts or ".." in run.parts or run.is_absolute():
            raise ConfigError(f"name must name a folder inside the runs folder, got {self.name!r}")
        if self.steps < 1 or self.batch_size < 2 or self.elite_batch_size < 2:
            raise ConfigError("steps must be >= 1 and batch sizes >= 2")
        if self.lr <= 0 or self.head_lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ConfigError("lr, head_lr and grad_clip must be > 0 and weight_decay >= 0")
        if not 0 < self.elite_fraction <= 1 or not 0 <= self.balance_alpha <= 1:
            raise ConfigError("elite_fraction must be in (0, 1] and balance_alpha in [0, 1]")
        if not 0 <= self.modality_caption_prob < 1:
            raise ConfigError(f"modality_caption_prob must be in [0, 1), got {self.modality_caption_prob}")
        if not 0 <= self.alias_prob <= 1:
            raise ConfigError(f"alias_prob must be in [0, 1], got {self.alias_prob}")
        if not 0 < self.mask_prob < 1 or not 0 <= self.corpus_holdout < 1:
            raise ConfigError("mask_prob must be in (0, 1) and corpus_holdout in [0, 1)")
        if self.elite_text not in ELITE_TEXTS:
            raise ConfigError(f"elite_text must be one of {ELITE_TEXTS}, got {self.elite_text!r}")
        if self.elite_text != "composed" and self.elite_manifest and not self.elite_compose_missing:
            raise ConfigError("elite_text applies to the composed elite pairs; with an elite manifest and "
                              "elite_compose_missing off there are none (drop --elite-text)")
        if self.select not in ("last", "best"):
            raise ConfigError(f"select must be 'last' or 'best', got {self.select!r}")
        if self.mlm_head_warmup < 0 or self.warmup_steps < 0:
            raise ConfigError(f"mlm_head_warmup and warmup_steps must be >= 0, got {self.mlm_head_warmup} and "
                              f"{self.warmup_steps}")
        for name in ("seed", "data_seed"):  # torch.manual_seed's ValueError on a larger one was a traceback
            if not -(2**63) <= getattr(self, name) < 2**63:
                raise ConfigError(f"{name} must be a 64-bit whole number, got {getattr(self, name)}")
        if not 1 <= self.views <= MAX_VIEWS:  # 10**9 was accepted: the cache build would never end (or fit)
            raise ConfigError(f"views must be between 1 and {MAX_VIEWS} (each view is one more pass over every "
                              f"training image and one more copy of its feature maps in memory), got {self.views}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_text_tokens < 8:  # [CLS], a few words and [SEP]: fewer leaves nothing to mask or contrast
            raise ConfigError(f"max_text_tokens must be >= 8, got {self.max_text_tokens}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        self.augment.validate()
        self.losses.validate()
        if not any(getattr(self.losses, term) > 0 for term in STAGE_LOSSES[self.stage]):  # no loss: a traceback
            raise ConfigError(f"every loss term of stage {self.stage} ({', '.join(STAGE_LOSSES[self.stage])}) has "
                              "weight 0: nothing would train")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "train config").validate()

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validate()

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")  # whole or not at all


_NESTED = {"augment": AugmentConfig, "losses": LossWeights}


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (allowed: {', '.join(sorted(fields))})")
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NESTED and cls is TrainConfig:
            kwargs[key] = _build(_NESTED[key], value, f"{where}.{key}")
        else:
            kwargs[key] = _typed(value, types[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def _typed(value: Any, annotation: str, where: str) -> Any:
    """``value`` as the field's declared type (an int is a float; a JSON list is a tuple), or a
    :class:`ConfigError` naming the key: ``"steps": "10"`` ended in a TypeError traceback, ``"steps": 2.5`` or
    ``"public": "a.csv"`` (iterated letter by letter) trained."""
    if value is None and annotation.endswith(" | None"):
        return None
    base = annotation.removesuffix(" | None")
    if base.startswith("tuple["):
        item = base[len("tuple["):-1].split(",")[0].strip()
        length = None if base.endswith(", ...]") else base.count(",") + 1
        if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
            size = "a list of" if length is None else f"a list of {length}"
            raise ConfigError(f"{where} must be {size} {'strings' if item == 'str' else 'numbers'}, got {value!r}")
        return tuple(_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "str": str, "bool": bool}.get(base)
    if expected is None and base != "float":  # a type this check does not know: left to the dataclass
        return value
    if expected is None or not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        what = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false"}[base]
        raise ConfigError(f"{where} must be {what}{' or null' if annotation != base else ''}, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_json(path, "train config file")
    if not isinstance(data, dict):
        raise ConfigError(f"train config file {path} must hold a JSON object")
    return data
