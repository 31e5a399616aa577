"""One optimiser update (paper section 5.3), the step a newcomer can read top to bottom:

    lr -> for each of the update's micro-batches: autocast -> model -> loss -> scaler.scale(loss).backward()
       -> one all_reduce of the update's scalars -> unscale -> gradients / target tokens -> clip
       -> step -> update -> zero_grad

Gradients: each micro-batch's loss, summed over its target tokens, is scaled before backward by
1 / (max_tokens x update_freq), a constant common to every rank that keeps the backward's
magnitudes near those of a per-token mean (which matters in fp16); DDP averages the W ranks'
gradients in the backward of the last micro-batch (`no_sync` before it). After backward the
gradients are multiplied by W x max_tokens x update_freq / N, N being the target tokens of the
whole update over all ranks (fairseq too normalises after backward): they are then the per-token
mean gradient of the global batch, the same for W ranks x update_freq k as for one rank with
W x k. The multiplication is folded into the clipping, so the step touches the gradients no more
often than `clip_grad_norm_` alone did.

Host syncs: the update's scalars (loss, nll, target tokens, every rank's vote on a stop signal and
rank 0's training minutes) travel in one all_reduce, and one copy to the host after clipping
brings them back with the gradient norm, which decides whether the update is applied. Gradients
are equal on every rank after DDP's all-reduce, so the norm, and the decision, are too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer_mt.data.batching import Batch
from transformer_mt.training.loss import label_smoothed_cross_entropy
from transformer_mt.training.optim import learning_rate
from transformer_mt.training.run import TrainingRun
from transformer_mt.training.signals import agreed_signal


@dataclass
class StepResult:
    """What one update did, over all ranks (host numbers, from the update's one sync)."""

    loss: float  # label-smoothed cross-entropy summed over the update's target tokens (nats)
    nll: float  # negative log-likelihood, summed the same way
    tokens: int  # target tokens of the update
    grad_norm: float  # of the per-token mean gradient, before clipping
    lr: float
    applied: bool  # False: non-finite gradients, the optimiser did not step
    stop_signal: int  # the signal every rank stops for after this update (0: go on)
    minutes: float  # training minutes so far, resumes included, as rank 0 counts them


def train_step(run: TrainingRun, batches: list[Batch]) -> StepResult:
    """One update of `run.model` over this rank's micro-batches `batches` (`update_freq` of them)."""
    cfg, runtime, model = run.cfg, run.runtime, run.model
    lr = set_learning_rate(run)
    model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=runtime.device)  # loss, nll
    backward_scale = 1.0 / (cfg.max_tokens * cfg.update_freq)
    for i, batch in enumerate(batches):
        run.cost.add_batch(
            model.forward_flops(*batch.src_tokens.shape, batch.target.shape[1]),
            int(batch.src_lengths.sum()),  # on the host, before the copy: no device sync
            batch.ntokens,
        )
        batch = batch.to(runtime.device, non_blocking=True)
        with runtime.no_sync(run.step_model, sync=i == len(batches) - 1):
            with runtime.autocast():
                logits = run.step_model(batch.src_tokens, batch.prev_tokens)
            loss, nll = label_smoothed_cross_entropy(
                logits, batch.target, epsilon=cfg.label_smoothing, ignore_index=model.pad_id
            )
            run.scaler.scale(loss * backward_scale).backward()
        sums += torch.stack([loss.detach(), nll.detach()]).double()
    totals = agree_on_update(run, sums, tokens=sum(b.ntokens for b in batches))
    run.scaler.unscale_(run.optimizer)
    # (W x max_tokens x update_freq) / N turns the summed, scaled gradients into the per-token mean.
    to_mean = (runtime.world_size * cfg.max_tokens * cfg.update_freq) / totals[2]
    grad_norm = normalise_and_clip(run, to_mean)
    loss_sum, nll_sum, tokens, *votes, minutes, norm = torch.cat([totals, grad_norm.view(1)]).tolist()
    applied = math.isfinite(norm)
    if applied:
        run.scaler.step(run.optimizer)
    run.scaler.update()  # fp16: a skipped update lowers the loss scale
    run.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, nll_sum, int(tokens), norm, lr, applied, agreed_signal(votes), minutes)


def set_learning_rate(run: TrainingRun) -> float:
    """The schedule's rate for the coming update (1-based), set on every parameter group."""
    cfg = run.cfg
    lr = learning_rate(
        run.state.step + 1,
        schedule=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        d_model=run.model.model_dim,
        lr=cfg.lr,
        lr_scale=cfg.lr_scale,
        max_steps=cfg.max_steps,
        min_lr=cfg.min_lr,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def agree_on_update(run: TrainingRun, sums: Tensor, *, tokens: int) -> Tensor:
    """The update's scalars summed over the ranks in one all_reduce, on the device (no host sync):
    [loss, nll, target tokens, a vote per stop signal, rank 0's minutes of training]."""
    minutes = run.cost.elapsed() / 60 if run.runtime.is_main else 0.0
    host = torch.tensor([tokens, *run.stop.votes(), minutes], dtype=torch.float64)
    return run.runtime.all_reduce_sum(torch.cat([sums, host.to(sums.device, non_blocking=True)]))


def normalise_and_clip(run: TrainingRun, to_mean: Tensor) -> Tensor:
    """Multiply the gradients by `to_mean` and clip their norm to `trainer.clip_norm` (0: no
    clipping) in one pass; returns the norm of the mean gradient before clipping, on the device."""
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) * to_mean
    max_norm = run.cfg.clip_norm if run.cfg.clip_norm > 0 else math.inf
    torch._foreach_mul_(grads, (to_mean * torch.clamp(max_norm / (norm + 1e-6), max=1.0)).to(grads[0].dtype))
    return norm


__all__ = ["StepResult", "train_step", "set_learning_rate"]
