"""Label-smoothed cross-entropy against a hand computation."""

import math

import pytest
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


def autograd_reference(logits, target, epsilon, ignore_index):
    """The loss as plain autograd ops: what the hand-written backward must match."""
    lprobs = torch.nn.functional.log_softmax(logits.float(), dim=-1)
    keep = target.ne(ignore_index)
    gold = target.masked_fill(~keep, 0).unsqueeze(-1)
    nll = -lprobs.gather(-1, gold).squeeze(-1)
    loss = (1.0 - epsilon) * nll + epsilon * -lprobs.mean(dim=-1)
    return loss[keep].sum(), nll[keep].sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_matches_autograd(dtype):
    torch.manual_seed(2)
    logits = (3 * torch.randn(3, 6, 50)).to(dtype)
    target = torch.randint(1, 50, (3, 6))
    target[0, 4:] = target[2, 1:] = -100  # padding, an id outside the vocabulary
    grads = []
    for loss_fn in (label_smoothed_cross_entropy, autograd_reference):
        x = logits.clone().requires_grad_()
        loss, nll = loss_fn(x, target, epsilon=0.1, ignore_index=-100)
        (0.7 * loss + 0.2 * nll).backward()  # both outputs carry a gradient
        grads.append((loss.detach(), nll.detach(), x.grad))
    (loss, nll, grad), (ref_loss, ref_nll, ref_grad) = grads
    torch.testing.assert_close((loss, nll), (ref_loss, ref_nll))
    assert grad.dtype == dtype and grad[target.eq(-100)].abs().max() == 0
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.float(), ref_grad.float(), atol=tolerance, rtol=tolerance)


def test_backward_twice_is_an_error():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    loss, _ = label_smoothed_cross_entropy(logits, torch.randint(0, 7, (2, 3)), epsilon=0.1, ignore_index=-1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()
