"""The training loop (paper section 5): token-budget batches, Adam with warm-up, label smoothing.

`build_run` assembles a run once (model, optimiser, loss scaler, batches, validation, checkpoints,
log) and puts it where it starts (`resume.start`: a resume, `trainer.init_from`, or fresh weights).
`train_loop` is then a plain loop that reads top to bottom: one update (`step.train_step`), then
the named decisions `maybe_log`, `maybe_validate`, `stop_reason` and `maybe_save`. Every rank takes
the same decisions, from numbers the ranks agreed on in the update's one all_reduce; where the run
is (device, precision, ranks) was decided once in `runtime.init_runtime`.

What can go wrong on a long run, and what the loop does (docs/reliability.md has the full table):
SIGTERM / SIGINT finish the update, save and exit 128 + N (`signals.py`); an update with non-finite
gradients is skipped (fp16: the scaler also lowers its scale), and `max_nonfinite_steps` of them in a
row stop training with an error naming the last good checkpoint; weights that are no longer finite are
never saved; a crash leaves at most a temporary file, which the next run deletes before resuming.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transformer_mt import checkpoint as ckpt
from transformer_mt.data.prepare import PreparedData
from transformer_mt.models import build_model, count_parameters
from transformer_mt.runtime import Runtime
from transformer_mt.training.checkpointer import Checkpointer
from transformer_mt.training.config import TrainerConfig
from transformer_mt.training.cost import cost_summary, device_peak_flops
from transformer_mt.training.data import train_loader, training_pairs, validation_set
from transformer_mt.training.metrics import LN2, TrainingLog
from transformer_mt.training.optim import build_adam
from transformer_mt.training.resume import start, training_snapshot
from transformer_mt.training.run import TrainingError, TrainingRun
from transformer_mt.training.signals import exit_status
from transformer_mt.training.step import StepResult, train_step
from transformer_mt.training.validation import validate


def train(
    runtime: Runtime,
    data: PreparedData,
    model_cfg: Any,
    cfg: TrainerConfig,
    decoding_cfg: Any,
    output_dir: str | Path,
    *,
    run_config: dict[str, Any],
) -> dict[str, Any]:
    """Train on the prepared `data` until a stopping rule fires; returns the final metrics."""
    run = build_run(runtime, data, model_cfg, cfg, decoding_cfg, Path(output_dir), run_config=run_config)
    try:
        with run.stop:
            reason, last = train_loop(run)
        return finish(run, reason, last)
    finally:
        run.close()  # also after an error: no writer thread outlives the message


def build_run(
    runtime: Runtime,
    data: PreparedData,
    model_cfg: Any,
    cfg: TrainerConfig,
    decoding_cfg: Any,
    output_dir: Path,
    *,
    run_config: dict[str, Any],
) -> TrainingRun:
    """Every part of a run, assembled once, and the run put where it starts."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(model_cfg, vocab_size=len(data.vocab), pad_id=data.vocab.pad_id).to(runtime.device)
    pairs = training_pairs(data, model)  # longer pairs are left out, and counted in the log
    run = TrainingRun(
        cfg=cfg,
        runtime=runtime,
        model=model,
        step_model=model,  # wrapped below, once the weights are final
        optimizer=build_adam(
            model, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay, device=runtime.device
        ),
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16"),
        loader=train_loader(pairs, cfg, runtime),
        valid=validation_set(data, model, cfg, runtime, decoding_cfg),
        checkpointer=Checkpointer(
            output_dir / "checkpoints",
            keep_last=cfg.keep_last,
            model_config=_plain(model_cfg),
            vocab=data.vocab,
            run_config=run_config,
        ),
    )
    notes = start(run)  # resume, init_from or fresh; seeds the ranks' dropout streams
    run.step_model = runtime.wrap(model, compile=cfg.compile)
    run.log = TrainingLog(output_dir, total_steps=cfg.max_steps, enabled=runtime.is_main)
    try:
        for line in describe(run, data, len(pairs)) + notes:
            run.log.info(line)
    except BaseException:
        run.close()
        raise
    return run


def train_loop(run: TrainingRun) -> tuple[str, StepResult | None]:
    """Update until a stopping rule fires; returns why, and the last update's result."""
    reason, result = stop_reason(run, None), None
    run.window.reset(run.loader.wait_seconds)
    while not reason:
        result = train_step(run, next(run.loader))
        if result.applied:
            run.state.step += 1
            run.state.nonfinite_in_a_row = 0
            run.window.add(result.loss, result.nll, result.tokens)
            maybe_log(run, result)
        else:
            skip_update(run, result)  # raises after max_nonfinite_steps in a row
        maybe_validate(run, result)
        reason = stop_reason(run, result)
        maybe_save(run, reason)
    return reason, result


def stop_reason(run: TrainingRun, result: StepResult | None) -> str:
    """Why training stops after this update ("": it goes on); the one place where that is decided.
    `result` is None before this process's first update: a resumed run may have nothing left to do."""
    cfg, state = run.cfg, run.state
    if result is not None and result.stop_signal:
        return f"{signal.Signals(result.stop_signal).name} received; " + (
            f"{run.checkpointer.last} (step {state.step}) holds the training state: run the same command to resume"
            if state.step
            else "no update made yet, nothing to save"
        )
    minutes = result.minutes if result is not None else run.cost.wall_seconds / 60
    if budget := budget_spent(run, minutes):
        if budget.startswith("reached max_minutes"):
            budget += f" at step {state.step}" if result is not None else f" before this resume (step {state.step})"
        return budget
    if cfg.target_bleu and state.best_metric is not None and state.best_metric >= cfg.target_bleu:
        return f"reached target_bleu={cfg.target_bleu:g}: valid BLEU {state.best_metric:.2f} at step {state.best_step}"
    if cfg.patience and state.bad_validations >= cfg.patience:
        return f"no improvement in {cfg.patience} validations (patience)"
    return ""


def budget_spent(run: TrainingRun, minutes: float) -> str:
    """The budget rule that ends training at this point, if any: epochs, steps, minutes."""
    cfg, step = run.cfg, run.state.step
    if cfg.max_epochs and run.loader.epochs >= cfg.max_epochs:
        return f"reached max_epochs={cfg.max_epochs}"
    if step >= cfg.max_steps:
        return f"reached max_steps={cfg.max_steps}"
    if cfg.max_minutes and step and minutes >= cfg.max_minutes:
        return f"reached max_minutes={cfg.max_minutes:g}"
    return ""


def maybe_log(run: TrainingRun, result: StepResult) -> None:
    """The progress bar at every update; every `log_every` updates a line and TensorBoard scalars."""
    cfg, state, log = run.cfg, run.state, run.log
    log.advance(state.step, {"loss": f"{result.loss / max(result.tokens, 1) / LN2:.3f}", "lr": f"{result.lr:.2e}"})
    if state.step % cfg.log_every and state.step != cfg.max_steps:
        return
    waited = run.loader.wait_seconds
    metrics = run.window.summary(waited)
    metrics.update(
        lr=result.lr,
        grad_norm=result.grad_norm,
        loss_scale=run.scaler.get_scale() if run.scaler.is_enabled() else 1.0,
        skipped_steps=state.skipped_steps,
        epoch=run.loader.epochs,
    )
    if run.runtime.device.type == "cuda":
        metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(run.runtime.device) / 2**30
    log.scalars("train", metrics, state.step)
    log.info(
        f"step {state.step} | epoch {metrics['epoch']:.2f} | loss {metrics['loss']:.3f} | "
        f"nll {metrics['nll']:.3f} | ppl {metrics['ppl']:.2f} | lr {result.lr:.3g} | gnorm {result.grad_norm:.3f} | "
        f"tok/s {metrics['tokens_per_second']:.0f} | data wait {metrics['data_wait_share']:.2%} | "
        f"eta {_duration((cfg.max_steps - state.step) * metrics['seconds_per_step'])}"
        + (f" | loss scale {metrics['loss_scale']:g}" if run.scaler.is_enabled() else "")
        + (f" | skipped {state.skipped_steps}" if state.skipped_steps else "")
    )
    run.window.reset(waited)


def maybe_validate(run: TrainingRun, result: StepResult) -> None:
    """Validate every `valid_every` updates and when a budget ends training (not at a stop signal);
    track the best metric (saving `checkpoint_best.pt`) and the validations without improvement."""
    cfg, state, valid = run.cfg, run.state, run.valid
    due = state.step % cfg.valid_every == 0 or budget_spent(run, result.minutes)
    if not result.applied or result.stop_signal or not due:
        return
    scores, metric = validate(
        run.runtime,
        run.model,
        valid.data,
        valid.pairs,
        valid.batches,
        label_smoothing=cfg.label_smoothing,
        decoding_cfg=valid.decoding_cfg,
        bleu_sentences=cfg.valid_bleu_sentences if cfg.valid_bleu else None,
    )
    seconds = {k: scores.pop(k) for k in ("loss_seconds", "bleu_seconds") if k in scores}
    run.log.scalars("valid", {**scores, **seconds}, state.step)
    run.log.info(
        "valid | " + " | ".join(f"{k} {v:.3f}" for k, v in scores.items()) + f" | step {state.step} | "
        + ", ".join(f"{v:.1f} s {k.removesuffix('_seconds').replace('bleu', 'BLEU')}" for k, v in seconds.items())
    )
    if state.best_metric is not None and metric <= state.best_metric:
        state.bad_validations += 1
        return
    state.best_metric, state.best_step, state.bad_validations = metric, state.step, 0
    save(run, "best")


def maybe_save(run: TrainingRun, reason: str) -> None:
    """checkpoint_<step>.pt and checkpoint_last.pt every `save_every` updates and when training stops."""
    step = run.state.step
    if step and (reason or step % run.cfg.save_every == 0) and run.checkpointer.saved_step != step:
        save(run, "step")


def save(run: TrainingRun, tag: str) -> None:
    """Write the run's checkpoint (a collective); never weights that are no longer finite."""
    if not _finite(run.model):  # every rank holds the same weights, so every rank stops here
        raise TrainingError(
            f"step {run.state.step}: the model's weights are no longer finite; not saving them. The last good "
            f"checkpoint is {run.checkpointer.last_good()}. Lower trainer.lr (or raise trainer.warmup_steps) and "
            "run again"
        )
    run.checkpointer.write(training_snapshot(run), tag=tag, step=run.state.step)


def skip_update(run: TrainingRun, result: StepResult) -> None:
    """Count an update skipped for non-finite gradients; `max_nonfinite_steps` in a row stop training.

    In fp16 the scaler skips an update whenever the scaled gradients overflow and halves its scale;
    that is routine, and only once the scale is below 1 is the overflow in the gradients themselves.
    """
    cfg, state, scaler = run.cfg, run.state, run.scaler
    state.skipped_steps += 1
    if not scaler.is_enabled() or scaler.get_scale() < 1.0:
        state.nonfinite_in_a_row += 1
    scale = f", loss scale lowered to {scaler.get_scale():g}" if scaler.is_enabled() else ""
    run.log.info(
        f"step {state.step + 1}: non-finite gradients; update skipped{scale} ({state.skipped_steps} so far)"
    )
    if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
        message = (
            f"step {state.step + 1}: {state.nonfinite_in_a_row} updates in a row had non-finite gradients "
            f"(trainer.max_nonfinite_steps={cfg.max_nonfinite_steps}); the last good checkpoint is "
            f"{run.checkpointer.last_good()}. Lower trainer.lr (or raise trainer.warmup_steps, or set "
            "trainer.clip_norm) and run again to resume"
        )
        run.log.info(message)
        raise TrainingError(message)


def finish(run: TrainingRun, reason: str, last: StepResult | None) -> dict[str, Any]:
    """The end-of-run report: why it stopped, its cost (Table 2 style), the best checkpoint and what
    to run next. Returns the final metrics."""
    runtime, cfg, state, log = run.runtime, run.cfg, run.state, run.log
    flops, target_tokens = runtime.all_reduce_sum([run.cost.flops, run.cost.target_tokens])
    wall_seconds = run.cost.elapsed()
    log.info(f"stopped: {reason}")
    if reason.startswith("reached target_bleu"):
        log.info(
            f"time to target BLEU {cfg.target_bleu:g}: {wall_seconds / 60:.1f} min of training (validations "
            f"included) on {runtime.world_size} device(s), {flops:.3e} FLOPs (analytic, 3 x forward, all ranks)"
        )
    peak = cfg.peak_flops or device_peak_flops(runtime.device, runtime.precision)
    for line in cost_summary(
        flops=flops,
        wall_seconds=wall_seconds,
        target_tokens=int(target_tokens),
        devices=runtime.world_size,
        peak_flops=peak,
    ):
        log.info(line)
    stopped_by = last.stop_signal if last is not None else 0
    for line in best_and_next(run, finished=not stopped_by):
        log.info(line)
    return {
        "step": state.step,
        "best": state.best_metric,
        "stop_reason": reason,
        "flops": flops,
        "exit_status": exit_status(stopped_by) if stopped_by else 0,
    }


def best_and_next(run: TrainingRun, *, finished: bool) -> list[str]:
    """The best checkpoint, its validation score, and (when training finished) the commands to run next."""
    state, checkpointer = run.state, run.checkpointer
    if state.best_metric is None:
        return []
    score = f"valid BLEU {state.best_metric:.2f}" if run.cfg.valid_bleu else f"valid loss {-state.best_metric:.3f}"
    at = f"step {state.best_step}, " if state.best_step is not None else ""
    lines = [f"best checkpoint: {checkpointer.best} ({at}{score})"]
    if not finished:
        return lines
    lines.append(f"next: transformer-mt evaluate checkpoint={checkpointer.best}")
    last = len(ckpt.step_checkpoints(checkpointer.directory))
    if last >= 2:
        averaged = checkpointer.directory / f"checkpoint_avg_last{last}.pt"
        lines.append(
            f"  or average the last {last} checkpoints first: transformer-mt average "
            f"output_dir={checkpointer.directory.parent} last={last} && transformer-mt evaluate checkpoint={averaged}"
        )
    return lines


def describe(run: TrainingRun, data: PreparedData, fitting: int) -> list[str]:
    """The first lines of the log: the model, the data, where it runs."""
    runtime, total = run.runtime, data.manifest["splits"]["train"]["pairs"]
    lines = [
        f"model {run.checkpointer.model_config['arch']}: {count_parameters(run.model):,} parameters; "
        f"vocabulary {len(data.vocab)}; {fitting:,} training pairs, {len(run.loader.sampler)} batches per epoch "
        f"per rank; {runtime.world_size} rank(s) on {runtime.device.type}, {runtime.precision}"
    ]
    if fitting < total:
        lines.append(f"left out {total - fitting:,} training pairs longer than model.max_positions - 1 tokens")
    return lines


def _duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m: for the ETA in the step log."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (one device sync)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _plain(model_cfg: Any) -> dict[str, Any]:
    """The model config as a plain dict (what a checkpoint stores)."""
    return asdict(model_cfg) if is_dataclass(model_cfg) else dict(model_cfg)


__all__ = [
    "TrainerConfig",
    "TrainingError",
    "TrainingRun",
    "train",
    "build_run",
    "train_loop",
    "stop_reason",
    "maybe_log",
    "maybe_validate",
    "maybe_save",
]
