"""The one training loop of both stages.

A task object (:mod:`training.tasks`) turns a step into a dict of losses; this loop owns the optimiser (AdamW,
two learning rates), the warm-up + cosine schedule, autocast on CUDA, gradient clipping, the progress bar,
periodic validation, and the checkpoints:

- ``last.pt``: everything needed to resume (weights, optimiser, step, RNG state, history);
- ``best.pt``: the weights with the best validation score so far;
- ``model.pt``: the selected weights with their training provenance, ready for ``keepfit export --checkpoint``
  (which fits the modality head on the exported encoder).

Each step draws its data from a generator seeded by (seed, step), so a resumed run sees the same batches as an
uninterrupted one.  Every checkpoint holds the resolved training config.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.errors import CheckpointError, ConfigError, TrainingDivergedError
from model.files import atomic_write_text
from model.logs import progress_bars
from model.nn.factory import load_state, read_checkpoint, save_checkpoint
from model.nn.keepfit import KeepFITModel
from model.tokenizer import Tokenizer
from training.config import RECORDED_BEFORE, TrainConfig
from training.parts import count_parameters, param_groups
from training.reports import plot_curves

logger = logging.getLogger(__name__)


class Task(Protocol):
    model: KeepFITModel
    tokenizer: Tokenizer
    stats: dict[str, Any]

    def modules(self) -> dict[str, nn.Module]: ...
    def set_train(self) -> None: ...
    def step(self, step: int, gen: torch.Generator) -> tuple[dict[str, Tensor], int]: ...
    def evaluate(self) -> dict[str, float]: ...
    def extra_state(self) -> dict[str, Any]: ...
    def load_extra_state(self, state: dict[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path  # model.pt
    selected_step: int
    best_step: int
    best_score: float
    pairs_per_s: float
    history: list[dict[str, Any]]


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919) % (2**63 - 1)


def train(task: Task, cfg: TrainConfig, run_dir: Path, device: torch.device, resume: bool = False,
          meta: dict[str, Any] | None = None) -> TrainResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    last, best_path, final = run_dir / "last.pt", run_dir / "best.pt", run_dir / "model.pt"
    modules = task.modules()
    groups = param_groups(modules, cfg.lr, cfg.head_lr, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
    params = [p for g in groups for p in g["params"]]
    _log_parameters(task, modules, cfg, device)
    amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    payload = check_resumable(run_dir, cfg, resume, knowledge=(meta or {}).get("knowledge"))
    if payload is not None:
        st = _resume(payload, last, task, optimizer, device, scaler)
        # the history as of last.pt: rows of steps run after it (a run stopped between checkpoints) are run again
        atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(row) + "\n" for row in st.history))
    else:
        if resume:  # a run stopped before its first checkpoint: nothing to continue, so it starts over
            logger.warning("nothing to resume: %s holds no last.pt; training from step 0", run_dir)
        # a run that failed before its first checkpoint leaves its history and best.pt: not this run's
        (run_dir / "history.jsonl").unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)
        st = _RunState()
        seed_everything(cfg.seed)
    # only once this run is known to go ahead: a refused one (another config, no --resume) left it as it was
    cfg.write(run_dir / "config.json")
    start, history, train_time, pairs = st.start, st.history, st.train_time, st.pairs
    best_score, best_step = st.best_score, st.best_step
    def checkpoint_extra(step: int) -> dict[str, Any]:
        return {"train_config": cfg.to_dict(), "step": step, "history": history, "best_score": best_score,
                "best_step": best_step, "task_state": task.extra_state(), "stats": task.stats,
                "train_time": train_time, "train_pairs": pairs, **(meta or {})}

    if payload is not None:  # best.pt must hold the weights of the resumed history's best step (or be absent)
        _reconcile_best(best_path, best_step, start,
                        lambda: save_checkpoint(best_path, task.model, task.tokenizer, **checkpoint_extra(start)))

    def run_eval(step: int) -> None:
        nonlocal best_score, best_step
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            metrics = task.evaluate()
        row = {"kind": "eval", "step": step, **metrics, "time": time.perf_counter() - t0}
        history.append(row)
        _append(run_dir / "history.jsonl", row)
        score = metrics.get("score", float("nan"))
        logger.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if not math.isnan(score) and score > best_score:
            best_score, best_step = score, step
            save_checkpoint(best_path, task.model, task.tokenizer, **checkpoint_extra(step))

    if start == 0 and not history:
        run_eval(0)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"{cfg.stage} {cfg.name}", unit="step",
               disable=not progress_bars())
    for step in bar:
        task.set_train()
        factor = lr_factor(step, cfg.steps, cfg.warmup_steps)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            losses, n_pairs = task.step(step, gen)
        grad_norm = _optimise(task, losses["loss"], step, optimizer, scaler, params, cfg.grad_clip)
        dt = time.perf_counter() - t0
        if step > start:  # the first step pays one-off costs (allocations, caches)
            train_time += dt
            pairs += n_pairs
        row = {"kind": "train", "step": step + 1, **{k: float(v.detach()) for k, v in losses.items()},
               "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "time": dt,
               "pairs_per_s": n_pairs / dt}
        history.append(row)
        _append(run_dir / "history.jsonl", row)
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in losses.items() if k in ("loss", "public", "mlm", "kt")})
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            run_eval(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(last, task.model, task.tokenizer, optimizer=optimizer.state_dict(),
                            torch_rng=torch.get_rng_state(), **_device_state(device, scaler),
                            **checkpoint_extra(done))
    bar.close()
    pairs_per_s = pairs / train_time if train_time else float("nan")

    selected = _deliver(task, cfg, best_path, best_step, final,
                        {**checkpoint_extra(cfg.steps), "pairs_per_s": pairs_per_s, "device": str(device)})
    plot_curves(history, run_dir / "curves.png", title=f"{cfg.name} ({cfg.stage})")
    speed = f"{pairs_per_s:.1f} pairs/s" if math.isfinite(pairs_per_s) else "speed not measured (one step)"
    logger.info("%s: best validation score %.4f at step %d; model.pt holds step %d (select=%s); %s on %s; wrote %s",
                cfg.name, best_score, best_step, selected, cfg.select, speed, device, final)
    return TrainResult(run_dir, final, selected, best_step, best_score, pairs_per_s, history)


def _log_parameters(task: Task, modules: dict[str, nn.Module], cfg: TrainConfig, device: torch.device) -> None:
    trainable, total = count_parameters(task.model)
    extra_trainable = sum(p.numel() for name, m in modules.items() if name != "model" for p in m.parameters())
    logger.info("training %s (stage %s) on %s: %.2fM of %.1fM model parameters train (+%.2fM task heads)",
                cfg.name, cfg.stage, device, trainable / 1e6, total / 1e6, extra_trainable / 1e6)


def _deliver(task: Task, cfg: TrainConfig, best_path: Path, best_step: int, final: Path,
             extra: dict[str, Any]) -> int:
    """Write ``model.pt``, the deliverable: the selected weights (end of the schedule, or the best validation
    step with ``select=best``).  Returns the step it holds."""
    selected = cfg.steps
    if cfg.select == "best" and best_path.is_file():
        load_state(task.model, read_checkpoint(best_path)["state_dict"], source=str(best_path))
        selected = best_step
    save_checkpoint(final, task.model, task.tokenizer, **extra, selected_step=selected)
    return selected


def _reconcile_best(best_path: Path, best_step: int, start: int, save_best: Callable[[], Any]) -> None:
    """On resume, keep ``best.pt`` only if it holds the resumed best step: one saved after ``last.pt`` (the run
    stopped in between) is of a step the resumed history does not hold, and ``select=best`` delivered it as
    model.pt under the older ``best_step``.  When the best step is last.pt's own (its weights are the ones just
    loaded), best.pt is written again from them; otherwise those weights are gone and a later better validation
    writes best.pt anew (without one model.pt holds the end of the schedule, and says so)."""
    held = None
    if best_path.is_file():
        try:
            held = int(read_checkpoint(best_path).get("step", -1))
        except (CheckpointError, TypeError, ValueError):
            held = None
        if held == best_step:
            return
        logger.warning("%s holds %s, not the best step %d of the resumed history (it was saved after last.pt, "
                       "before the run stopped): dropped", best_path,
                       "no readable step" if held is None else f"step {held}", best_step)
        best_path.unlink()
    if best_step == start:
        save_best()


@dataclass
class _RunState:
    """Where a run stands: the next step, its history, the best validation so far and the timed steps."""

    start: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = -1
    train_time: float = 0.0  # over the steps timed (the first step of a process pays one-off costs)
    pairs: int = 0


def check_resumable(run_dir: Path, cfg: TrainConfig, resume: bool, knowledge: dict[str, Any] | None = None,
                    folder_flag: str = "--name") -> dict[str, Any] | None:
    """``last.pt``'s payload when this run continues it (None when the run starts afresh), or a
    :class:`ConfigError`: a folder with a checkpoint and no ``--resume`` (the message names ``folder_flag``, the
    flag that chose the folder), a checkpoint of another config or trained with other knowledge (``knowledge``:
    this run's record, ``sha256`` of its content, compared with the one ``last.pt`` records), or one already past
    ``cfg.steps``.  :func:`train` calls it; ``keepfit train`` also before it builds anything, so a refused run
    changes nothing in the folder (it rewrote config.json and elite.csv)."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    if not resume:
        raise ConfigError(f"run folder {run_dir} already holds a checkpoint: pass --resume or choose another "
                          f"{folder_flag}")
    payload = read_checkpoint(last)
    # keys added since: their defaults, or what runs made before them did (a run trained on held-out copies)
    saved = {**TrainConfig().to_dict(), **RECORDED_BEFORE, **(payload.get("train_config") or {})}
    # the knowledge is compared by content below: the same file moved is the same run
    differs = sorted(k for k in set(saved) | set(cfg.to_dict())
                     if k not in ("steps", "device", "eval_every", "checkpoint_every", "select", "knowledge")
                     and saved.get(k) != cfg.to_dict().get(k))
    if differs:
        hint = ("; it was trained before held-out copies were dropped: pass --no-drop-held-out-copies"
                if saved.get("drop_held_out_copies") is False and cfg.drop_held_out_copies else "")
        raise ConfigError(f"cannot resume {last}: its config differs in {', '.join(differs)}{hint}")
    if knowledge is not None:
        _check_same_knowledge(last, payload.get("knowledge"), knowledge, folder_flag)
    if cfg.steps < int(payload["step"]):  # model.pt would say "step <steps>" and hold the weights of a later one
        raise ConfigError(f"cannot resume {last} with --steps {cfg.steps}: it is at step {payload['step']} "
                          f"already (--steps {payload['step']} or more)")
    return payload


def _check_same_knowledge(last: Path, recorded: Any, chosen: dict[str, Any], folder_flag: str = "--name") -> None:
    """Refuse to continue a run with other knowledge than it trained with: its captions and prompts would change
    mid-run, and model.pt would record only the second.  A checkpoint that records none (made before knowledge
    was recorded) trained with the packaged knowledge.  The refusal says how to go on (``folder_flag``: the flag
    that names a new run's folder)."""
    if not isinstance(recorded, dict):
        if not chosen.get("packaged"):
            raise ConfigError(f"cannot resume {last}: it was trained with the packaged knowledge (it records no "
                              f"other), not --knowledge {chosen['path']}; resume without --knowledge")
        return
    if recorded.get("sha256") != chosen.get("sha256"):
        was = "the packaged knowledge " if recorded.get("packaged") else ""
        now = "the packaged knowledge " if chosen.get("packaged") else "--knowledge "
        # the packaged file changed (a new release): its old content is in no checkpoint, only its SHA-256
        hint = ("; the packaged knowledge has changed since: resume with --knowledge FILE holding the content it "
                f"trained with (SHA-256 {recorded.get('sha256')}; e.g. model/data/knowledge.json of the release it "
                f"trained with), or start a new run (another {folder_flag}, without --resume)"
                if recorded.get("packaged") and chosen.get("packaged")
                else f"; resume with --knowledge {recorded.get('path')} (that content)" if not recorded.get("packaged")
                else "; resume without --knowledge")
        raise ConfigError(f"cannot resume {last}: it was trained with {was}{recorded.get('path')} (SHA-256 "
                          f"{str(recorded.get('sha256'))[:12]}), not {now}{chosen['path']} (SHA-256 "
                          f"{str(chosen.get('sha256'))[:12]}){hint}")


def _device_state(device: torch.device, scaler: Any) -> dict[str, Any]:
    """What ``last.pt`` holds besides the CPU RNG for a run on CUDA: the device's RNG (dropout draws from it there)
    and the fp16 loss scale; without them a resumed run's dropout and loss scale started over."""
    if device.type != "cuda":
        return {}
    return {"cuda_rng": torch.cuda.get_rng_state(device),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None}


def _resume(payload: dict[str, Any], last: Path, task: Task, optimizer: torch.optim.Optimizer,
            device: torch.device | None = None, scaler: Any = None) -> _RunState:
    """Load ``last.pt``'s payload (checked by :func:`check_resumable`) into the model, the optimiser, the task
    and the RNGs."""
    load_state(task.model, payload["state_dict"], source=str(last))
    optimizer.load_state_dict(payload["optimizer"])
    task.load_extra_state(payload.get("task_state") or {})
    st = _RunState(
        start=int(payload["step"]),
        history=list(payload.get("history") or []),
        best_score=float(payload.get("best_score", -math.inf)),
        best_step=int(payload.get("best_step", -1)),
        train_time=float(payload.get("train_time", 0.0)),
        pairs=int(payload.get("train_pairs", 0)),
    )
    if "torch_rng" in payload:
        torch.set_rng_state(payload["torch_rng"])
    if device is not None and device.type == "cuda" and payload.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(payload["cuda_rng"], device)
    if scaler is not None and scaler.is_enabled() and payload.get("grad_scaler"):
        scaler.load_state_dict(payload["grad_scaler"])
    logger.info("resumed %s at step %d (best %.4f at step %d)", last, st.start, st.best_score, st.best_step)
    return st


def _optimise(task: Task, loss: Tensor, step: int, optimizer: torch.optim.Optimizer, scaler: Any,
              params: list[torch.nn.Parameter], grad_clip: float) -> float:
    """One optimiser step on ``loss`` (scaled under fp16 autocast, clipped); returns the gradient norm."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"loss is {loss.item()} at step {step}: lower --lr or check the data")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # the temperature stays within CLIP's range
        task.model.logit_scale.clamp_(0.0, math.log(100.0))
    return grad_norm


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
