"""Label-smoothed cross-entropy (paper section 5.4, "Label Smoothing", epsilon_ls = 0.1).

The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly over the
whole vocabulary (Szegedy et al. 2016). Padding positions contribute nothing. Both the smoothed loss
and the plain negative log-likelihood are returned as sums, so that the trainer can normalise by the
number of target tokens of the whole (accumulated, all-rank) batch.

The gradient is written by hand, in the buffer of the forward's log-probabilities. With
p = softmax(logits) and q the smoothed target, d loss / d logits = p - q, and d nll / d logits =
p - one_hot. Left to autograd, the same loss made five (positions x vocabulary) tensors a step (the
gather's and the mean's gradients, their sum, the log-softmax's gradient), and on a CPU each fresh
tensor of that size costs its page faults as much as its arithmetic: in a profile of the Multi30k
Transformer's step, about a tenth of it (docs/benchmarks.md). Here the backward makes none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, *, epsilon: float, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """(loss_sum, nll_sum) over the non-padding positions.

    logits: (batch, tgt_len, vocab), any float dtype (the log-softmax runs in fp32).
    target: (batch, tgt_len) token ids, `ignore_index` at padding.
    Backward through the result runs once (its buffer becomes the gradient): no `retain_graph`.
    """
    vocab = logits.size(-1)
    return _LabelSmoothedCrossEntropy.apply(
        logits.float().reshape(-1, vocab), target.reshape(-1), epsilon, ignore_index
    )


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, target: Tensor, epsilon: float, ignore_index: int
    ) -> tuple[Tensor, Tensor]:
        """logits: (positions, vocab) fp32; target: (positions,)."""
        lprobs = F.log_softmax(logits, dim=-1)  # (positions, vocab)
        keep = target.ne(ignore_index)  # (positions,)
        gold = target.masked_fill(~keep, 0).unsqueeze(-1)  # (positions, 1): any id at padding
        nll = -lprobs.gather(-1, gold).squeeze(-1)  # (positions,)
        uniform = -lprobs.mean(dim=-1)  # cross-entropy against the uniform distribution
        loss = (1.0 - epsilon) * nll + epsilon * uniform
        zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
        ctx.save_for_backward(lprobs, gold, keep)
        ctx.epsilon = epsilon
        ctx.used = False
        return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()

    @staticmethod
    def backward(ctx: FunctionCtx, grad_loss: Tensor, grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.used:
            raise RuntimeError(
                "label_smoothed_cross_entropy's backward runs once: its saved log-probabilities become "
                "the gradient (call backward without retain_graph, or compute the loss again)"
            )
        ctx.used = True
        lprobs, gold, keep = ctx.saved_tensors
        epsilon, vocab = ctx.epsilon, lprobs.size(-1)
        kept = keep.to(lprobs.dtype)  # (positions,)
        # grad_loss (p - (1 - eps) one_hot - eps / V) + grad_nll (p - one_hot), zero at padding
        grad = lprobs.exp_()  # p, in place
        grad.mul_((kept * (grad_loss + grad_nll)).unsqueeze(-1))
        grad.sub_((kept * (grad_loss * epsilon / vocab)).unsqueeze(-1))
        grad.scatter_add_(-1, gold, (-kept * ((1.0 - epsilon) * grad_loss + grad_nll)).unsqueeze(-1))
        return grad, None, None, None
