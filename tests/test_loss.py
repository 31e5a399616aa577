"""Label-smoothed cross-entropy against a hand computation."""

import math

import torch

from transformer_mt.training.loss import label_smoothed_cross_entropy


def test_label_smoothing_matches_hand_computation():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]]])  # (1, 2, 3)
    target = torch.tensor([[0, 2]])
    eps = 0.1
    loss, nll = label_smoothed_cross_entropy(logits, target, epsilon=eps, ignore_index=-100)

    expected_loss = expected_nll = 0.0
    for row, gold in ((logits[0, 0].tolist(), 0), (logits[0, 1].tolist(), 2)):
        log_z = math.log(sum(math.exp(x) for x in row))
        logp = [x - log_z for x in row]
        expected_nll += -logp[gold]
        # q = (1 - eps) * one_hot + eps / V
        expected_loss += -sum(((1 - eps) * (k == gold) + eps / 3) * logp[k] for k in range(3))
    assert math.isclose(nll.item(), expected_nll, rel_tol=1e-6)
    assert math.isclose(loss.item(), expected_loss, rel_tol=1e-6)


def test_padding_positions_contribute_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    loss, nll = label_smoothed_cross_entropy(logits, target, epsilon=0.1, ignore_index=0)
    changed = logits.clone()
    changed[target.eq(0)] = 100.0  # whatever the model says at padding
    loss2, nll2 = label_smoothed_cross_entropy(changed, target, epsilon=0.1, ignore_index=0)
    assert torch.equal(loss, loss2) and torch.equal(nll, nll2)


def test_no_smoothing_is_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    loss, nll = label_smoothed_cross_entropy(logits, target, epsilon=0.0, ignore_index=0)
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), reduction="sum")
    assert torch.allclose(loss, reference) and torch.allclose(nll, reference)
