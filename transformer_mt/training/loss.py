"""Label-smoothed cross-entropy (paper section 5.4, "Label Smoothing", epsilon_ls = 0.1).

The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly over the
whole vocabulary (Szegedy et al. 2016). Padding positions contribute nothing. Both the smoothed loss
and the plain negative log-likelihood are returned as sums, so that the trainer can normalise by the
number of target tokens of the whole (accumulated, all-rank) batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, *, epsilon: float, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """(loss_sum, nll_sum) over the non-padding positions.

    logits: (batch, tgt_len, vocab), any float dtype (the log-softmax runs in fp32).
    target: (batch, tgt_len) token ids, `ignore_index` at padding.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)  # (batch, tgt_len, vocab)
    keep = target.ne(ignore_index)  # (batch, tgt_len)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (batch, tgt_len)
    uniform = -lprobs.mean(dim=-1)  # cross-entropy against the uniform distribution
    loss = (1.0 - epsilon) * nll + epsilon * uniform
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()
