"""The two training stages as small task objects that turn a step into a dict of losses (open_clip style);
:mod:`training.loop` owns everything else (optimiser, schedule, precision, checkpoints, progress).

- :class:`TextTask` (stage 1, preliminary textual pretraining): masked-language modelling on the ophthalmic
  corpus, plus a contrastive objective that pulls each category's name and expert descriptions together and
  apart from other categories' (the language zero-shot classification is built from).
- :class:`HybridTask` (stage 2, hybrid image-text knowledge injection): soft-target CLIP on public categorical
  data, CLIP on elite pairs, attention-based knowledge transfer, and the caption decoder's generative loss.

Over 500 lines: the two stages' tasks, each with its data set-up, step and validation, and the helpers they share.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.config import get_config
from model.errors import CheckpointError, ConfigError, DataError
from model.knowledge import ANY, Knowledge
from model.nn.factory import create_model, default_tokenizer, load_pretrained, read_checkpoint
from model.nn.keepfit import KeepFITModel
from model.tokenizer import Tokenizer
from training.config import TrainConfig
from training.data import (
    PublicSource,
    Sample,
    build_elite,
    evaluated_captions,
    fold_caption,
    public_samples,
    read_corpus,
    read_manifest,
    spelt_as_known,
    write_elite_manifest,
)
from training.evaluate import (
    HEADLINE,
    SUITE,
    EvalSet,
    class_embeddings,
    load_eval_set,
    load_modality_set,
    load_spec,
    modality_embeddings,
    zero_shot_metrics,
)
from training.features import FeatureStore, ImageSource, PixelSource, build_feature_store
from training.loop import Task
from training.losses import (
    HybridBatch,
    MLMHead,
    TextDraw,
    hybrid_objectives,
    text_objectives,
    weighted_terms,
)
from training.parts import (
    ImagePrefix,
    ImageTail,
    TextTail,
    backbone_blocks,
    encode_unique,
    set_trainable,
    text_trainable_layers,
    vision_freeze_blocks,
)

logger = logging.getLogger(__name__)

MAX_LOGIT_SCALE = 100.0


def build_model(cfg: TrainConfig) -> tuple[KeepFITModel, Tokenizer, dict[str, Any]]:
    """ImageNet / MiniLM initialisation; with ``cfg.init`` the text encoder comes from a stage-1 checkpoint."""
    mcfg = get_config(cfg.model)
    model = load_pretrained(create_model(mcfg))
    tokenizer = default_tokenizer(mcfg)
    info: dict[str, Any] = {}
    if cfg.init:
        payload = read_checkpoint(cfg.init)
        theirs = payload["model_config"]["text"]
        if theirs != mcfg.to_dict()["text"] or payload["model_config"]["embed_dim"] != mcfg.embed_dim:
            raise CheckpointError(
                f"--init {cfg.init}: its text encoder ({theirs}, {payload['model_config']['embed_dim']}-d) does not "
                f"match config {mcfg.name}"
            )
        state = {k.removeprefix("text_encoder."): v for k, v in payload["state_dict"].items()
                 if k.startswith("text_encoder.")}
        model.text_encoder.load_state_dict(state, strict=True)
        info = {"init": str(cfg.init), "init_stage": (payload.get("train_config") or {}).get("stage"),
                "init_step": payload.get("step")}
        logger.info("text encoder initialised from %s (step %s)", cfg.init, payload.get("step"))
    return model, tokenizer, info


# ================================================================================================ stage 1
@dataclass(frozen=True)
class KnowledgeGroup:
    """One category for the knowledge-contrastive objective: its texts are positives of each other."""

    name: str
    texts: list[str]  # the name, its expert descriptions and the prompts built from them
    aliases: list[str]  # the other names clinicians use, bare and inside their modality's template


def knowledge_groups(knowledge: Knowledge) -> list[KnowledgeGroup]:
    """Per category: its name, its expert descriptions, the prompts built from them, and its aliases."""
    groups = []
    for name, entry in sorted(knowledge.data["categories"].items()):
        by_mod = entry.get("descriptions", {})
        texts = [name]
        for modality, descs in by_mod.items():
            texts += list(descs)
            texts += [knowledge.template(modality if modality != ANY else "CFP").format(d) for d in descs]
        texts = list(dict.fromkeys(texts))
        aliases: list[str] = []
        for modality, words in (entry.get("aliases") or {}).items():
            template = knowledge.template(modality if modality != ANY else "CFP")
            aliases += [w for word in words for w in (word, template.format(word))]
        aliases = [a for a in dict.fromkeys(aliases) if a not in texts]
        if len(texts) + len(aliases) >= 2:
            groups.append(KnowledgeGroup(name, texts, aliases))
    return groups


def evaluation_captions(cfg: TrainConfig, data_root: Path | None) -> set[str]:
    """The captions (whitespace-folded, case-folded) of the rows outside ``train`` of the atlas pairs that the
    suite scores (whatever the elite manifest: ``--elite-manifest none`` trained stage 1 on all 60) and of the
    elite manifest."""
    return evaluated_captions(data_root, cfg.elite_manifest)


class TextTask:
    """Stage 1: MLM on the corpus + knowledge contrastive on category names and descriptions."""

    def __init__(self, cfg: TrainConfig, model: KeepFITModel, tokenizer: Tokenizer, device: torch.device,
                 knowledge: Knowledge, data_root: Path | None, run_dir: Path) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.knowledge = knowledge
        corpus = Path(cfg.corpus) if cfg.corpus else (data_root / "text" / "ophthalmic_corpus.jsonl" if data_root
                                                      else None)
        if corpus is None:
            raise DataError("stage 1 needs a text corpus: pass --corpus or --data-root")
        texts = read_corpus(corpus)
        # the captions that evaluation scores (the elite pairs outside train: the atlas retrieval test) are never
        # trained on, not even as text: all 60 were in the corpus, so image <-> caption retrieval on "unseen"
        # figures scored a text encoder that had read their captions
        held = evaluation_captions(cfg, data_root)
        kept = [t for t in texts if fold_caption(t) not in held]
        if len(kept) < len(texts):
            logger.info("stage 1: %d corpus texts left out: captions of elite pairs outside train",
                        len(texts) - len(kept))
        texts = kept
        rng = random.Random(cfg.data_seed)
        order = list(range(len(texts)))
        rng.shuffle(order)
        n_hold = int(round(cfg.corpus_holdout * len(texts)))
        self.holdout = [texts[i] for i in order[:n_hold]]
        self.train_texts = [texts[i] for i in order[n_hold:]]
        if not self.train_texts:
            raise DataError(f"corpus {corpus} leaves no training text after holding out {n_hold}")
        self.layers = text_trainable_layers(model, cfg.text_trainable_layers, "text")
        set_trainable(model, vision_blocks=0, text_layers=self.layers)
        model.image_encoder.requires_grad_(False)  # stage 1 is text only
        model.knowledge_attention.requires_grad_(False)
        if model.caption_decoder is not None:
            model.caption_decoder.requires_grad_(False)
        model.logit_scale.requires_grad_(False)
        bert = model.text_encoder.bert
        self.frozen = len(bert.encoder.layer) - self.layers
        self.head = MLMHead(bert.hidden_size, bert.embeddings.word_embeddings, bert.config.layer_norm_eps).to(device)
        self.tail = TextTail(model, tokenizer, self.layers)
        self.groups = knowledge_groups(knowledge)
        self.objectives = text_objectives(model, self.head, tokenizer, self.frozen, self.train_texts, self.tail,
                                          self.groups, cfg, device)
        self.stats = {"corpus": str(corpus), "train_texts": len(self.train_texts), "holdout_texts": len(self.holdout),
                      "knowledge_categories": len(self.groups),
                      "knowledge_aliases": sum(len(g.aliases) for g in self.groups),
                      "text_trainable_layers": self.layers}
        logger.info("stage 1: %d corpus texts (%d held out), %d knowledge categories, top %d text layers train",
                    len(self.train_texts), len(self.holdout), len(self.groups), self.layers)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "mlm_head": self.head}

    def set_train(self) -> None:
        self.model.train()
        self.head.train()
        bert = self.model.text_encoder.bert
        bert.embeddings.eval()
        for layer in bert.encoder.layer[: self.frozen]:
            layer.eval()

    def step(self, step: int, gen: torch.Generator) -> tuple[dict[str, Tensor], int]:
        draw = TextDraw(step, gen, random.Random(int(torch.randint(2**31, (1,), generator=gen))))
        return weighted_terms(self.objectives, draw, self.cfg.losses), self.cfg.batch_size

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out text: MLM loss and accuracy with a fixed masking; knowledge loss on a fixed draw."""
        self.model.eval()
        self.head.eval()
        gen = torch.Generator().manual_seed(1234)
        losses, accs, weights = [], [], []
        for i in range(0, len(self.holdout), 64):
            chunk = self.holdout[i : i + 64]
            loss, acc = self.objectives["mlm"].loss(chunk, gen)
            losses.append(float(loss))
            accs.append(float(acc))
            weights.append(len(chunk))
        know = float(self.objectives["knowledge"].loss(random.Random(99), n_categories=64))
        out = {"knowledge_loss": know}
        if losses:
            out["holdout_mlm_loss"] = float(np.average(losses, weights=weights))
            out["holdout_mlm_acc"] = float(np.average(accs, weights=weights))
        out["score"] = -out.get("holdout_mlm_loss", know)
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"mlm_head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "text_batches": self.tail.computed}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "mlm_head" in state:
            self.head.load_state_dict(state["mlm_head"])
        self.tail.replay(state.get("text_batches") or [], self.device)  # the cached text states, bit for bit


def _validation_sets(data_root: Path, knowledge: Knowledge, holdout: Sequence[str]) -> list[EvalSet]:
    """The suite's val splits that exist under ``data_root`` (and the modality set) that choose the checkpoint,
    without the images of held-out categories."""
    sets = [
        load_spec(s, data_root, knowledge, "val")
        for s in SUITE if s.name != "dme_cfp_all" and (data_root / s.manifest).is_file()
    ] + [load_modality_set(data_root, knowledge, "val")]
    absent = sorted({s.manifest for s in SUITE if not (data_root / s.manifest).is_file()})
    if absent:
        logger.info("validation without %s (not under %s)", ", ".join(absent), data_root)
    return _without_held_out(sets, knowledge, holdout)


def _without_held_out(sets: list[EvalSet], knowledge: Knowledge, holdout: Sequence[str]) -> list[EvalSet]:
    """Choosing the checkpoint must not look at held-out images either (they stay candidate classes)."""
    held = {knowledge.canonical(h) for h in holdout}
    if held:
        sets = [v.subset(np.asarray([v.classes[y] not in held for y in v.labels])) for v in sets]
    return sets


def _public_task_name(manifest: Path, column: str) -> str:
    """``<folder>/<column>`` for a ``labels.csv`` (the data's convention), else ``<folder>/<file stem>/<column>``."""
    parts = [manifest.parent.name] if manifest.parent.name else []
    if manifest.stem != "labels" or not parts:
        parts.append(manifest.stem)
    return "/".join([*parts, column])


@dataclass(frozen=True)
class PublicValTask:
    """A validation task on a ``--public`` manifest's own ``val`` rows (what the training report records)."""

    name: str
    manifest: str
    column: str
    modality: str
    classes: tuple[str, ...]


def _public_validation_sets(data_root: Path, knowledge: Knowledge, sources: Sequence[PublicSource],
                            holdout: Sequence[str]) -> tuple[list[EvalSet], list[PublicValTask]]:
    """Zero-shot validation on the ``val`` rows of the ``--public`` manifests, one task per manifest, label column
    and modality (``<folder>/<column>``, with ``:<MODALITY>`` when the column's val rows are of several), as the
    suite's val sets are built (:func:`load_eval_set`).  The candidate classes are the column's labels in the
    manifest's train and val rows of that modality (a clinic's own names, unknown to the knowledge, are scored by
    name).  A manifest and column that a suite task reads already (the default sources, ``dr_sh_600``) is not
    validated twice; a column whose val rows hold fewer than two classes (or a manifest without a ``split``
    column: its every row is trained on) gets no task."""
    covered = {((data_root / s.manifest).resolve(), s.label_column) for s in SUITE
               if (data_root / s.manifest).is_file()}
    sets: list[EvalSet] = []
    tasks: list[PublicValTask] = []
    for source in sources:
        path = data_root / source.manifest
        manifest = read_manifest(path)
        if "split" not in manifest.columns:
            logger.info("no validation on %s: it has no 'split' column (every row is trained on)", path)
            continue
        for column in source.label_columns:
            if (path.resolve(), column) in covered:
                continue
            covered.add((path.resolve(), column))
            labels: defaultdict[str, dict[str, set[str]]] = defaultdict(lambda: {"train": set(), "val": set()})
            for r in manifest.rows:
                if r[column] and r["split"] in ("train", "val"):
                    modality = spelt_as_known(r.get("modality") or source.modality or "", knowledge)
                    if modality in knowledge.modalities:
                        labels[modality][r["split"]].add(knowledge.canonical(r[column]))
            of_val = sorted(m for m in labels if labels[m]["val"])
            base = _public_task_name(path.resolve(), column)
            for modality in of_val:
                name = base if len(of_val) == 1 else f"{base}:{modality}"
                name = next(n for i in range(1, len(tasks) + 2)  # two manifests in folders of one name
                            if (n := name if i == 1 else f"{name}#{i}") not in {t.name for t in tasks})
                if len(labels[modality]["val"]) < 2:
                    logger.info("no validation task %s: its val rows hold one class (%s)", name,
                                next(iter(labels[modality]["val"])))
                    continue
                classes = sorted(labels[modality]["train"] | labels[modality]["val"])
                sets.append(load_eval_set(path, column, knowledge, "val", modality, classes, name=name))
                tasks.append(PublicValTask(name, source.manifest, column, modality, tuple(classes)))
            if not of_val:
                logger.info("no validation task for %s column %r: no labelled val rows", path, column)
    sets = _without_held_out(sets, knowledge, holdout)
    kept = {v.name for v in sets if len(v.labels)}
    return [v for v in sets if v.name in kept], [t for t in tasks if t.name in kept]


def selection_score(metrics: dict[str, float], public_tasks: Sequence[str] = ()) -> dict[str, float]:
    """The validation score that ``--select best`` maximises: the mean of the suite's headline val tasks
    (:data:`HEADLINE`) and, when the ``--public`` manifests have val tasks of their own, the mean of those two
    means (the user's own val counts half, however many suite tasks there are).  Without own tasks the score is
    the headline mean alone, as before.  NaN tasks and halves are left out."""
    def mean(names: Sequence[str]) -> float:
        found = [metrics[f"val_{n}"] for n in names if f"val_{n}" in metrics and not np.isnan(metrics[f"val_{n}"])]
        return float(np.mean(found)) if found else float("nan")

    suite = mean(HEADLINE)
    if not public_tasks:
        return {"score": suite}
    own = mean(public_tasks)
    halves = [x for x in (suite, own) if not np.isnan(x)]
    return {"score": float(np.mean(halves)) if halves else float("nan"), "score_suite": suite, "score_public": own}


def _balanced_weights(samples: Sequence[Any], alpha: float) -> Tensor:
    """Sampling weights that balance the label-set groups: inverse group size to the power ``alpha``
    (``[1]`` for an empty set, which is never sampled)."""
    if not samples:
        return torch.ones(1, dtype=torch.float64)
    counts = Counter(s.stratum for s in samples)
    return torch.tensor([counts[s.stratum] ** -alpha for s in samples], dtype=torch.float64)


@dataclass
class HybridData:
    """What stage 2 trains and validates on, read before any model work: the public training samples, the elite
    pairs (written to the run folder as ``elite.csv`` once they are known to be readable) and the validation sets."""

    public: list[Sample]
    public_skipped: dict[str, int]  # why manifest rows were left out -> how many
    elite: list[Sample]
    elite_text_counts: Counter[str]  # where the elite captions came from -> how many
    val_sets: list[EvalSet]  # the suite's, then the --public manifests' own (public_val)
    public_val: list[PublicValTask] = field(default_factory=list)

    @classmethod
    def build(cls, cfg: TrainConfig, knowledge: Knowledge, data_root: Path, run_dir: Path) -> HybridData:
        sources = [PublicSource.parse(s) for s in cfg.public]
        public = public_samples(data_root, knowledge, "train", sources, cfg.holdout, cfg.drop_held_out_copies)
        own_sets, own_tasks = _public_validation_sets(data_root, knowledge, sources, cfg.holdout)
        unknown = sorted(set(labels_not_in_knowledge(public.samples, knowledge))
                         | {c for t in own_tasks for c in t.classes if not knowledge.is_known(c)})
        if unknown:  # a clinic's own category: trained on its bare name, and an export without it scores it so
            logger.warning("labels that are no category of the knowledge (%s) are captioned by their bare name, "
                           "without expert descriptions: %s; to train on descriptions, build knowledge that has them "
                           "(keepfit knowledge --dictionary FILE --out FILE) and train with --knowledge FILE (export "
                           "then ships it)", knowledge.source or "model/data/knowledge.json", ", ".join(unknown))
        elite = build_elite(data_root, knowledge, public.samples, cfg.elite_manifest, cfg.elite_compose_missing,
                            cfg.elite_fraction, cfg.elite_text, cfg.holdout, seed=cfg.data_seed)
        return cls(public.samples, dict(public.skipped), elite.samples, elite.counts,
                   _validation_sets(data_root, knowledge, cfg.holdout) + own_sets, own_tasks)

    def paths(self) -> list[Path]:
        """Every image once: public, then elite, then validation images."""
        return list(dict.fromkeys([s.path for s in self.public] + [s.path for s in self.elite]
                                  + [p for v in self.val_sets for p in v.paths]))


def labels_not_in_knowledge(samples: list[Sample], knowledge: Knowledge) -> list[str]:
    """The samples' labels that name no category of ``knowledge`` (they have no expert descriptions)."""
    return sorted({label for s in samples for label in s.labels if not knowledge.is_known(label)})


# ================================================================================================ stage 2
class HybridTask:
    """Stage 2: hybrid image-text knowledge injection on public categorical data and elite pairs."""

    def __init__(self, cfg: TrainConfig, model: KeepFITModel, tokenizer: Tokenizer, device: torch.device,
                 knowledge: Knowledge, data_root: Path | None, run_dir: Path) -> None:
        if data_root is None:
            raise DataError("stage 2 needs the data root with the public manifests: pass --data-root")
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.knowledge = knowledge
        w = cfg.losses
        if w.gen > 0 and model.caption_decoder is None:
            raise ConfigError(f"loss gen > 0 but config {model.cfg.name} has no caption decoder (decoder.enabled)")
        self.use_elite = w.elite > 0 or w.kt > 0 or w.gen > 0
        data = HybridData.build(cfg, knowledge, data_root, run_dir)
        public, elite, self.val_sets = data.public, data.elite, data.val_sets
        self.public_val = data.public_val
        paths = data.paths()
        self.row = {p: i for i, p in enumerate(paths)}
        self.vision_blocks = vision_freeze_blocks(model, cfg.vision_freeze_blocks)
        self.text_layers = text_trainable_layers(model, cfg.text_trainable_layers, "hybrid")
        set_trainable(model, self.vision_blocks, self.text_layers)
        if not self.use_elite or w.kt == 0:  # no elite set, or no knowledge transfer: nothing trains it
            model.knowledge_attention.requires_grad_(False)
        if model.caption_decoder is not None and w.gen == 0:
            model.caption_decoder.requires_grad_(False)
        self.prefix = ImagePrefix(model, self.vision_blocks)
        self.tail = ImageTail(model, self.vision_blocks)
        # beside the run (runs/<name> -> runs/.cache), shared by the runs of one folder, never in the cwd
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(run_dir).parent / ".cache"
        self.source: ImageSource
        if self.vision_blocks:
            self.source = build_feature_store(paths, self.prefix, model.cfg.preprocess, cfg.augment, cfg.views,
                                              cfg.data_seed, device, cache_dir)
        else:
            self.source = PixelSource(paths, model.cfg.preprocess, cfg.augment, cfg.seed)
        ok = self.source.valid
        self.public = [s for s in public if ok[self.row[s.path]]]
        self.elite = [s for s in elite if ok[self.row[s.path]]]
        self.val_sets = [v.subset(np.asarray([ok[self.row[p]] for p in v.paths])) for v in self.val_sets]
        if not self.public:
            sources = sorted({s.source for s in public})
            raise DataError(
                f"no readable public training images: none of the {len(public)} images that "
                f"{', '.join(sources)} list{'s' if len(sources) == 1 else ''} decodes (corrupt, empty or not images)"
            )
        if self.use_elite and len(self.elite) < 2:
            raise DataError(f"the elite set has {len(self.elite)} readable pairs; need at least 2")
        # once the data is known to train: a run refused here leaves no file behind
        write_elite_manifest(run_dir / "elite.csv", elite)
        # ---- sampling weights: balance the label-set groups (power alpha of inverse frequency)
        self.public_weights = _balanced_weights(self.public, cfg.balance_alpha)
        self.elite_weights = _balanced_weights(self.elite, cfg.balance_alpha)
        self.text_tail = TextTail(model, tokenizer, self.text_layers)
        self.modality_prompts = knowledge.modality_prompts()
        self.elite_ids = {s.caption: torch.from_numpy(tokenizer([s.caption])[0][0]) for s in self.elite}
        # the caption decoder predicts over the closed vocabulary of the elite captions (see CaptionDecoder.loss)
        used = torch.cat(list(self.elite_ids.values())) if self.elite_ids else torch.zeros(0, dtype=torch.long)
        self.caption_vocab = torch.unique(used[used != tokenizer.pad_id]).to(device)
        self.objectives = hybrid_objectives(cfg.kt_same_modality, self.elite_ids, tokenizer.pad_id, self.caption_vocab)
        if w.gen > 0 and model.caption_decoder is not None:
            # nn.Embedding's N(0, 1) init makes the tied output logits ~16x too large for a fresh decoder
            nn.init.normal_(model.caption_decoder.token_embedding.weight, std=0.02)
        self.stats = self._describe(data.public_skipped, elite, data.elite_text_counts, run_dir)
        logger.info("stage 2: %d public images (%s), %d elite pairs, losses %s", len(self.public),
                    self.stats["public_by_modality"], len(self.elite),
                    {k: v for k, v in w.__dict__.items() if k in ("public", "elite", "kt", "gen") and v > 0})

    def _describe(self, public_skipped: dict[str, int], elite_all: list[Any], elite_text_counts: Counter[str],
                  run_dir: Path) -> dict[str, Any]:
        """What the run trains on (written into every checkpoint as ``stats``)."""
        cfg = self.cfg
        return {
            "public_train_images": len(self.public),
            "public_by_modality": dict(Counter(s.modality for s in self.public)),
            "public_skipped_rows": dict(public_skipped),
            "public_labels_not_in_knowledge": labels_not_in_knowledge(self.public, self.knowledge),
            "elite_pairs": len(self.elite),
            "elite_manifest": str(run_dir / "elite.csv"),
            "elite_source": cfg.elite_manifest or "composed",
            "elite_by_modality": dict(Counter(s.modality for s in elite_all)),
            "elite_text": cfg.elite_text,
            "elite_captions": dict(elite_text_counts) or None,
            "elite_distinct_captions": len({s.caption for s in self.elite}),
            "val_sets": {v.name: len(v.labels) for v in self.val_sets},
            # the --public manifests' own val tasks (also in val_sets; selection_score counts them half)
            "val_sets_public": {t.name: {"manifest": t.manifest, "column": t.column, "modality": t.modality,
                                         "classes": list(t.classes)} for t in self.public_val},
            "images": self.source.report.summary(),
            "unreadable": dict(self.source.report.skipped),
            "vision_freeze_blocks": self.vision_blocks,
            "text_trainable_layers": self.text_layers,
            "feature_cache": bool(self.vision_blocks),
            "caption_vocabulary": int(len(self.caption_vocab)),
        }

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def set_train(self) -> None:
        self.model.train()
        if self.vision_blocks:
            backbone_blocks(self.model)[: self.vision_blocks].eval()

    def _public_caption(self, sample: Sample, rng: random.Random) -> tuple[str, tuple[str, str]]:
        """FLAIR-style: one of the image's labels, one of that label's expert descriptions (or, with probability
        ``alias_prob``, one of its aliases), the modality's template; the (modality, label) pair is what makes two captions positives of each other.  Now and then
        the modality itself is the label (its prompts describe the kind of image), so that recognising the
        modality from text stays aligned while the category prompts are learnt."""
        if self.cfg.modality_caption_prob and rng.random() < self.cfg.modality_caption_prob:
            return rng.choice(self.modality_prompts[sample.modality]), (sample.modality, "")
        label = rng.choice(sample.labels)
        aliases = self.knowledge.aliases(label, sample.modality) if self.cfg.alias_prob else []
        if aliases and rng.random() < self.cfg.alias_prob:  # the label as a clinician may word it
            description = rng.choice(aliases)
        else:
            description = rng.choice(self.knowledge.descriptions(label, sample.modality))
        return self.knowledge.template(sample.modality).format(description), (sample.modality, label)

    def step(self, step: int, gen: torch.Generator) -> tuple[dict[str, Tensor], int]:
        cfg, w, dev = self.cfg, self.cfg.losses, self.device
        rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
        pub = [self.public[i] for i in torch.multinomial(self.public_weights, cfg.batch_size, True, generator=gen)]
        eli = ([self.elite[i] for i in torch.multinomial(self.elite_weights, cfg.elite_batch_size, True,
                                                          generator=gen)] if self.use_elite else [])
        samples = pub + eli
        views = torch.randint(self.source_views, (len(samples),), generator=gen).tolist()
        x = self.source.batch([self.row[s.path] for s in samples], views, dev)
        img, feats = self.tail(x)  # [B+E, D], [B+E, C, h, w]
        caps, keys = zip(*(self._public_caption(s, rng) for s in pub), strict=True)
        texts = list(caps) + [s.caption for s in eli]
        txt = encode_unique(self.text_tail, texts, dev)  # [B+E, D]
        scale = self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        b = len(pub)
        batch = HybridBatch(self.model, pub, eli, list(keys), img[:b], txt[:b], img[b:], txt[b:], feats[b:], scale, dev)
        losses = weighted_terms(self.objectives, batch, w)  # in a fixed order: public, elite, kt, gen
        losses["logit_scale"] = scale.detach()
        return losses, len(samples)

    @property
    def source_views(self) -> int:
        return self.source.views if isinstance(self.source, FeatureStore) else max(1, self.cfg.views)

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embed_rows(self, rows: list[int], batch_size: int = 128) -> np.ndarray:
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            x = self.source.batch(chunk, [0] * len(chunk), self.device)
            out.append(self.tail(x)[0].float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_tail(list(texts), self.device).float().cpu().numpy()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Zero-shot balanced accuracy on the validation split (torch, view 0); the checkpoint criterion is
        :func:`selection_score` of it."""
        self.model.eval()
        scale = float(self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))
        out: dict[str, float] = {}
        for v in self.val_sets:
            if not v.paths:  # every image of it unreadable
                out[f"val_{v.name}"] = float("nan")
                continue
            img = self.embed_rows([self.row[p] for p in v.paths])
            flair = self.model.cfg.text.pooling == "flair"
            if v.name == "modality":
                cls = modality_embeddings(self.encode_texts, self.knowledge, v.classes, flair)
            else:
                assert v.modality is not None
                cls = class_embeddings(self.encode_texts, self.knowledge, v.classes, v.modality, flair)
            out[f"val_{v.name}"] = float(zero_shot_metrics(img, v.labels, cls, v.classes, scale)["balanced_accuracy"])
        return {**out, **selection_score(out, [t.name for t in self.public_val])}

    def extra_state(self) -> dict[str, Any]:
        """What a resumed run needs besides weights and optimiser to take the steps an uninterrupted one takes:
        the batches the cached text states were computed in and, decoding pixels, the augmentation's RNG."""
        state: dict[str, Any] = {"text_batches": self.text_tail.computed}
        if isinstance(self.source, PixelSource):
            state["augment_rng"] = self.source.gen.get_state()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.text_tail.replay(state.get("text_batches") or [], self.device)
        if isinstance(self.source, PixelSource) and state.get("augment_rng") is not None:
            self.source.gen.set_state(state["augment_rng"])


TASKS: dict[str, Callable[..., Task]] = {"text": TextTask, "hybrid": HybridTask}
