"""The training loop (paper section 5): token-budget batches, Adam with warm-up, label smoothing.

One plain loop that reads top to bottom. Where it runs (device, precision, ranks) is decided once in
`distributed.init_runtime`; the step is

    autocast -> loss -> scaler.scale(loss).backward() -> unscale -> clip -> step -> update -> zero_grad

with gradient synchronisation only on the last micro-batch of an accumulation (`no_sync`). The loss of
every micro-batch is divided by the number of target tokens of the whole update over all ranks, so a
run on W ranks with `update_freq=k` computes the same gradient as one rank with `update_freq=W*k`.

What can go wrong on a long run, and what the loop does (docs/reliability.md has the full table):
SIGTERM / SIGINT finish the update, save and exit 128 + N (`signals.py`); an update with non-finite
gradients is skipped (fp16: the scaler also lowers its scale), and `max_nonfinite_steps` of them in a
row stop training with an error naming the last good checkpoint; weights that are no longer finite are
never saved; a crash leaves at most a temporary file, which the next run deletes before resuming.
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
from torch import nn

from transformer_mt import checkpoint as ckpt
from transformer_mt.data.batching import Batch, TokenBatchSampler
from transformer_mt.data.binarize import ParallelDataset
from transformer_mt.data.prepare import DataConfig, load_prepared, prepare_data
from transformer_mt.models import EncoderDecoder, build_model, count_parameters
from transformer_mt.runtime import PRECISIONS, Runtime, init_runtime, shutdown
from transformer_mt.training.cost import TrainingCost, cost_summary, device_peak_flops
from transformer_mt.training.loss import label_smoothed_cross_entropy
from transformer_mt.training.metrics import TrainingLog
from transformer_mt.training.optim import build_adam, learning_rate
from transformer_mt.training.resume import TrainingError, TrainingRun, TrainState, restore, training_snapshot
from transformer_mt.training.signals import StopRequest, exit_status
from transformer_mt.training.validation import validate


@dataclass
class TrainerConfig:
    # Batching: tokens per device per micro-batch, micro-batches per update.
    max_tokens: int = 4096
    update_freq: int = 1
    # Stopping.
    max_steps: int = 100_000
    max_epochs: int = 0  # 0: no limit
    max_minutes: float = 0.0  # wall-clock budget of the whole run, resumes included (0: no limit)
    patience: int = 0  # validations without improvement before stopping; 0: never stop early
    # Optimiser and schedule (paper 5.3).
    schedule: str = "noam"  # noam (the paper's formula) | inverse_sqrt (fairseq's) | cosine | constant
    lr: float = 5e-4  # peak for inverse_sqrt and cosine, the rate for constant
    min_lr: float = 0.0  # cosine: the rate it reaches at max_steps
    lr_scale: float = 1.0  # factor on the paper's formula
    warmup_steps: int = 4000
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping (the paper does not clip)
    label_smoothing: float = 0.1
    # Where and how.
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    seed: int = 1
    dist_timeout_s: float = 600.0  # a collective waiting longer (a rank died or hangs) ends the job
    max_nonfinite_steps: int = 10  # consecutive non-finite updates before training stops (fp16: at scale < 1)
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU when the device is unknown
    # Logging, validation, checkpoints.
    log_every: int = 50
    valid_every: int = 1000
    valid_bleu: bool = True
    valid_bleu_sentences: int = 200
    save_every: int = 1000
    keep_last: int = 5
    resume: bool = True

    def __post_init__(self) -> None:
        positive = ("max_tokens", "update_freq", "max_steps", "log_every", "valid_every", "save_every")
        positive += ("max_nonfinite_steps", "valid_bleu_sentences")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_epochs", "patience", "keep_last", "warmup_steps", "seed"):  # 0: off / keep all / none
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("lr", "lr_scale", "adam_eps"):  # a rate <= 0 would train by gradient ascent, or not at all
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"trainer.{name} must be a positive number, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "clip_norm", "max_minutes"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"trainer.{name} must be 0 or a positive number, got {getattr(self, name)}")
        if len(self.adam_betas) == 2 and not all(0.0 <= beta < 1.0 for beta in self.adam_betas):
            raise ValueError(f"trainer.adam_betas must both be in [0, 1), got {list(self.adam_betas)}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"trainer.peak_flops must be positive (or null to measure it), got {self.peak_flops}")
        if self.warmup_steps < 1 and self.schedule != "constant":
            raise ValueError(f"trainer.warmup_steps must be at least 1, got {self.warmup_steps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"trainer.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if len(self.adam_betas) != 2:
            raise ValueError(f"trainer.adam_betas needs two values, got {list(self.adam_betas)}")
        learning_rate(1, schedule=self.schedule, warmup_steps=1, d_model=1, lr=1.0, lr_scale=1.0)
        if self.schedule == "cosine" and not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"trainer.min_lr={self.min_lr} must be in [0, trainer.lr={self.lr}] for schedule=cosine")
        if self.schedule == "cosine" and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"trainer.warmup_steps={self.warmup_steps} leaves no step to decay over before "
                f"trainer.max_steps={self.max_steps} (schedule=cosine)"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision={self.precision!r} is not one of: {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device={self.device!r} is not one of: auto, cpu, cuda")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"trainer.dist_timeout_s must be positive, got {self.dist_timeout_s}")


def train(
    data_cfg: DataConfig,
    model_cfg: Any,
    cfg: TrainerConfig,
    decoding_cfg: Any,
    output_dir: str | Path,
    *,
    run_config: dict[str, Any],
) -> dict[str, Any]:
    """Train until a stopping rule fires; returns the final metrics."""
    runtime = init_runtime(device=cfg.device, precision=cfg.precision, timeout_s=cfg.dist_timeout_s)
    try:
        return _train(runtime, data_cfg, model_cfg, cfg, decoding_cfg, Path(output_dir), run_config)
    finally:
        shutdown(runtime)


def _train(runtime, data_cfg, model_cfg, cfg, decoding_cfg, output_dir, run_config) -> dict[str, Any]:
    checkpoints = output_dir / "checkpoints"
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        data = prepare_data(data_cfg, output_dir)
    runtime.barrier()
    if not runtime.is_main:
        data = load_prepared(output_dir)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(model_cfg, vocab_size=len(data.vocab), pad_id=data.vocab.pad_id).to(runtime.device)
    optimizer = build_adam(
        model,
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        device=runtime.device,
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    train_set = data.dataset("train")
    fits = fitting_pairs(train_set, model)  # longer pairs are left out, and counted in the log
    if len(fits) == 0:  # an empty sampler would make the loop below spin forever
        raise TrainingError(
            f"none of the {len(train_set):,} training pairs fits the model: every one has a side of "
            f"model.max_positions - 1 = {model.max_positions - 1} tokens or more (with EOS / BOS); "
            "raise model.max_positions or lower data.max_len"
            if len(train_set)
            else "the training split is empty after cleaning; check the data and data.max_len / min_len"
        )
    sampler = _sampler(train_set, fits, cfg, runtime, shuffle=True, multiple_of=cfg.update_freq)
    valid_fits = fitting_pairs(data.dataset("valid"), model)  # and its batches, the same at every validation
    valid_batches = _sampler(data.dataset("valid"), valid_fits, cfg, runtime, shuffle=False).epoch_batches(0)
    valid = (valid_fits, valid_batches)
    state, cost = TrainState(), TrainingCost()
    model_config = _plain(model_cfg)
    run = TrainingRun(
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        sampler=sampler,
        state=state,
        cost=cost,
        model_config=model_config,
        vocab=data.vocab,
        run_config=run_config,
    )
    last = checkpoints / "checkpoint_last.pt"
    partial = ckpt.remove_partial_writes(checkpoints) if runtime.is_main else []  # left by a crash
    if cfg.resume and last.exists():
        saved = ckpt.load_checkpoint(last)
        restore(run, runtime, saved, last)
    elif runtime.distributed:
        torch.manual_seed(cfg.seed + runtime.rank)  # distinct dropout masks per rank
    step_model = runtime.wrap(model, compile=cfg.compile)

    log = TrainingLog(output_dir, total_steps=cfg.max_steps, initial_step=state.step, enabled=runtime.is_main)
    log.info(
        f"model {model_config['arch']}: {count_parameters(model):,} parameters; vocabulary {len(data.vocab)}; "
        f"{len(fits):,} training pairs, {len(sampler)} batches per epoch per rank; "
        f"{runtime.world_size} rank(s) on {runtime.device.type}, {runtime.precision}"
    )
    if len(fits) < len(train_set):
        log.info(
            f"left out {len(train_set) - len(fits):,} training pairs longer than model.max_positions - 1 tokens"
        )
    if partial:
        log.info(f"removed {len(partial)} temporary file(s) of checkpoint writes cut short: {partial}")
    if state.step:
        log.info(f"resumed from {last} at step {state.step}")
    saved_step = state.step if state.step else None  # the step of checkpoint_last.pt, None before any

    def last_good() -> str:
        return f"{last} (step {saved_step})" if saved_step is not None else "none (no checkpoint written yet)"

    def save(tag: str) -> None:
        nonlocal saved_step
        if not _finite(model):  # every rank holds the same weights, so every rank stops here
            raise TrainingError(
                f"step {state.step}: the model's weights are no longer finite; not saving them. The last good "
                f"checkpoint is {last_good()}. Lower trainer.lr (or raise trainer.warmup_steps) and run again"
            )
        snapshot = training_snapshot(run, runtime)  # a collective; the checkpoint on rank 0
        if snapshot is not None:
            for name in _checkpoint_names(tag, state.step):
                ckpt.save_checkpoint(snapshot, checkpoints / name)
            ckpt.rotate(checkpoints, cfg.keep_last)
        if tag == "step":
            saved_step = state.step

    batches = _endless(sampler)
    window = {"loss": 0.0, "nll": 0.0, "tokens": 0.0, "steps": 0, "time": time.perf_counter()}
    stop_reason, stopped_by = "", 0
    if cfg.max_minutes and state.step and _agreed_minutes(runtime, cost) >= cfg.max_minutes:
        stop_reason = f"reached max_minutes={cfg.max_minutes:g} before this resume (step {state.step})"
    metrics: dict[str, float] = {}
    with StopRequest() as stop_request:
        while not stop_reason:
            if state.step >= cfg.max_steps:
                stop_reason = f"reached max_steps={cfg.max_steps}"
                break
            stopped_by = stop_request.agreed_signal(runtime)  # every rank stops after the same update
            if stopped_by:
                if state.step and saved_step != state.step:
                    save("step")
                stop_reason = f"{signal.Signals(stopped_by).name} received; " + (
                    f"{last_good()} holds the training state: run the same command to resume"
                    if saved_step is not None
                    else "no update made yet, nothing to save"
                )
                break
            group = [train_set.batch(fits[next(batches)]) for _ in range(cfg.update_freq)]
            lr = learning_rate(
                state.step + 1,
                schedule=cfg.schedule,
                warmup_steps=cfg.warmup_steps,
                d_model=model.model_dim,
                lr=cfg.lr,
                lr_scale=cfg.lr_scale,
                max_steps=cfg.max_steps,
                min_lr=cfg.min_lr,
            )
            for group_params in optimizer.param_groups:
                group_params["lr"] = lr
            loss_sum, nll_sum, ntokens, grad_norm, applied = _update(
                runtime, step_model, model, optimizer, scaler, group, cfg, cost
            )
            if not applied:
                _skip_update(state, scaler, cfg, log, last_good())  # raises after too many in a row
                continue
            state.step += 1
            state.nonfinite_in_a_row = 0
            window["loss"] += loss_sum
            window["nll"] += nll_sum
            window["tokens"] += ntokens
            window["steps"] += 1
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                elapsed = time.perf_counter() - window["time"]
                tokens = max(window["tokens"], 1.0)
                metrics = {
                    "loss": window["loss"] / tokens / math.log(2),
                    "nll": window["nll"] / tokens / math.log(2),
                    "ppl": 2 ** (window["nll"] / tokens / math.log(2)),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_second": tokens / max(elapsed, 1e-9),
                    "loss_scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
                    "skipped_steps": state.skipped_steps,
                    "epoch": _epochs_done(sampler),
                }
                if runtime.device.type == "cuda":
                    metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(runtime.device) / 2**30
                log.scalars("train", metrics, state.step)
                log.info(
                    f"step {state.step} | epoch {metrics['epoch']:.2f} | loss {metrics['loss']:.3f} | "
                    f"nll {metrics['nll']:.3f} | ppl {metrics['ppl']:.2f} | lr {lr:.3g} | gnorm {grad_norm:.3f} | "
                    f"tok/s {metrics['tokens_per_second']:.0f} | "
                    f"eta {_duration((cfg.max_steps - state.step) * elapsed / window['steps'])}"
                    + (f" | loss scale {metrics['loss_scale']:g}" if scaler.is_enabled() else "")
                    + (f" | skipped {state.skipped_steps}" if state.skipped_steps else "")
                )
                window = {"loss": 0.0, "nll": 0.0, "tokens": 0.0, "steps": 0, "time": time.perf_counter()}
            log.advance(1, {"loss": f"{loss_sum / max(ntokens, 1) / math.log(2):.3f}", "lr": f"{lr:.2e}"})

            if cfg.max_epochs and _epochs_done(sampler) >= cfg.max_epochs:
                stop_reason = f"reached max_epochs={cfg.max_epochs}"
            elif state.step >= cfg.max_steps:
                stop_reason = f"reached max_steps={cfg.max_steps}"
            elif cfg.max_minutes and _agreed_minutes(runtime, cost) >= cfg.max_minutes:
                stop_reason = f"reached max_minutes={cfg.max_minutes:g} at step {state.step}"
            if state.step % cfg.valid_every == 0 or stop_reason:
                improved = _validate_and_track(runtime, model, data, valid, cfg, decoding_cfg, state, log)
                if cfg.patience and state.bad_validations >= cfg.patience:
                    stop_reason = stop_reason or f"no improvement in {cfg.patience} validations (patience)"
                if improved:
                    save("best")
            if state.step % cfg.save_every == 0 or stop_reason:
                save("step")

    totals = runtime.all_reduce_sum([cost.flops, cost.target_tokens])
    log.info(f"stopped: {stop_reason}")
    peak = cfg.peak_flops or device_peak_flops(runtime.device, runtime.precision)
    for line in cost_summary(
        flops=totals[0],
        wall_seconds=cost.elapsed(),
        target_tokens=int(totals[1]),
        devices=runtime.world_size,
        peak_flops=peak,
    ):
        log.info(line)
    log.close()
    return {
        "step": state.step,
        "best": state.best_metric,
        "stop_reason": stop_reason,
        "flops": totals[0],
        "exit_status": exit_status(stopped_by) if stopped_by else 0,
    }


def _skip_update(state: TrainState, scaler, cfg: TrainerConfig, log: TrainingLog, last_good: str) -> None:
    """Count an update skipped for non-finite gradients; `max_nonfinite_steps` in a row stop training.

    In fp16 the scaler skips an update whenever the scaled gradients overflow and halves its scale;
    that is routine, and only once the scale is below 1 is the overflow in the gradients themselves.
    """
    state.skipped_steps += 1
    if not scaler.is_enabled() or scaler.get_scale() < 1.0:
        state.nonfinite_in_a_row += 1
    scale = f", loss scale lowered to {scaler.get_scale():g}" if scaler.is_enabled() else ""
    log.info(
        f"step {state.step + 1}: non-finite gradients; update skipped{scale} ({state.skipped_steps} so far)"
    )
    if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
        message = (
            f"step {state.step + 1}: {state.nonfinite_in_a_row} updates in a row had non-finite gradients "
            f"(trainer.max_nonfinite_steps={cfg.max_nonfinite_steps}); the last good checkpoint is {last_good}. "
            "Lower trainer.lr (or raise trainer.warmup_steps, or set trainer.clip_norm) and run again to resume"
        )
        log.info(message)
        raise TrainingError(message)


def _update(runtime: Runtime, step_model, model, optimizer, scaler, group: list[Batch], cfg, cost):
    """One optimiser update over `update_freq` micro-batches. Returns sums over all ranks."""
    local_tokens = sum(b.ntokens for b in group)
    (global_tokens,) = runtime.all_reduce_sum([local_tokens])
    loss_total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    nll_total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    model.train()
    for i, batch in enumerate(group):
        batch = batch.to(runtime.device, non_blocking=True)
        last = i == len(group) - 1
        with runtime.no_sync(step_model, sync=last):
            with runtime.autocast():
                logits = step_model(batch.src_tokens, batch.prev_tokens)
            loss, nll = label_smoothed_cross_entropy(
                logits, batch.target, epsilon=cfg.label_smoothing, ignore_index=model.pad_id
            )
            # DDP averages gradients over ranks; scaling by world_size / tokens makes it a per-token mean.
            scaler.scale(loss * (runtime.world_size / global_tokens)).backward()
        loss_total += loss.detach().double()
        nll_total += nll.detach().double()
        cost.add_batch(
            model.forward_flops(*batch.src_tokens.shape, batch.target.shape[1]),
            int(batch.src_lengths.sum()),
            batch.ntokens,
        )
    scaler.unscale_(optimizer)
    max_norm = cfg.clip_norm if cfg.clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    loss_sum, nll_sum = runtime.all_reduce_sum([loss_total.item(), nll_total.item()])
    finite = math.isfinite(grad_norm.item())
    if finite or scaler.is_enabled():
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)  # skipped by the scaler itself when fp16 gradients overflowed
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            finite = False
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, nll_sum, global_tokens, float(grad_norm), finite


def fitting_pairs(dataset: ParallelDataset, model: EncoderDecoder) -> np.ndarray:
    """Indices of the pairs the model can take: both sides, with EOS / BOS, within its positions."""
    limit = model.max_positions or np.iinfo(np.int64).max
    return np.flatnonzero((dataset.src_sizes < limit) & (dataset.tgt_sizes < limit))


def _sampler(
    dataset: ParallelDataset,
    fits: np.ndarray,
    cfg: TrainerConfig,
    runtime: Runtime,
    *,
    shuffle: bool,
    multiple_of: int = 1,
) -> TokenBatchSampler:
    """This rank's token-budget batches over the pairs `fits`; it yields positions into `fits`."""
    return TokenBatchSampler(
        dataset.src_sizes[fits],
        dataset.tgt_sizes[fits],
        max_tokens=cfg.max_tokens,
        shuffle=shuffle,
        seed=cfg.seed,
        rank=runtime.rank,
        world_size=runtime.world_size,
        multiple_of=multiple_of,
    )


def _validate_and_track(runtime, model, data, valid, cfg, decoding_cfg, state: TrainState, log) -> bool:
    """Validate, log, and update best / patience. Returns whether the metric improved."""
    pairs, batches = valid
    scores, metric = validate(
        runtime,
        model,
        data,
        pairs,
        batches,
        label_smoothing=cfg.label_smoothing,
        decoding_cfg=decoding_cfg,
        bleu_sentences=cfg.valid_bleu_sentences if cfg.valid_bleu else None,
    )
    log.scalars("valid", scores, state.step)
    log.info("valid | " + " | ".join(f"{k} {v:.3f}" for k, v in scores.items()) + f" | step {state.step}")
    improved = state.best_metric is None or metric > state.best_metric
    if improved:
        state.best_metric, state.bad_validations = metric, 0
    else:
        state.bad_validations += 1
    return improved


def _duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m: for the ETA in the step log."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _endless(sampler: TokenBatchSampler):
    """Batches of index lists, epoch after epoch; the sampler keeps its own position."""
    while True:
        yield from sampler


def _epochs_done(sampler: TokenBatchSampler) -> float:
    state = sampler.state_dict()
    return state["epoch"] + state["position"] / max(len(sampler), 1)


def _agreed_minutes(runtime: Runtime, cost: TrainingCost) -> float:
    """Minutes of training so far, resumes included, as rank 0 counts them (a collective under DDP),
    so that every rank stops after the same update."""
    minutes = cost.elapsed() / 60 if runtime.is_main else 0.0
    return runtime.all_reduce_sum([minutes])[0]


def _checkpoint_names(tag: str, step: int) -> list[str]:
    if tag == "best":
        return ["checkpoint_best.pt"]
    return [f"checkpoint_{step}.pt", "checkpoint_last.pt"]


def _finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (one device sync)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _plain(model_cfg: Any) -> dict[str, Any]:
    """The model config as a plain dict (what a checkpoint stores)."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(model_cfg):
        return asdict(model_cfg)
    return dict(model_cfg)
