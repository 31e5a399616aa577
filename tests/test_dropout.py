"""Dropout on a CPU: nn.Dropout's distribution and gradient, with its mask drawn as uniform >= p."""

import pytest
import torch

from transformer_mt.models.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_a_fraction_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    x = torch.rand(400, 500) + 1.0  # never 0: a zero in the output is a dropped element
    y = dropout(x, p, training=True)
    dropped = y.eq(0)
    # 200,000 Bernoulli draws: the standard deviation of the fraction is under 0.0012
    assert abs(dropped.float().mean().item() - p) < 0.005
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))


def test_gradient_is_the_mask_scaled():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7)


def test_eval_p0_and_p1():
    x = torch.randn(8, 8)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    assert dropout(x, 1.0, training=True).eq(0).all()


def test_bf16_keeps_its_dtype_and_rate():
    torch.manual_seed(2)
    x = torch.ones(300, 300, dtype=torch.bfloat16)
    y = dropout(x, 0.3, training=True)
    assert y.dtype == torch.bfloat16
    assert abs(y.eq(0).float().mean().item() - 0.3) < 0.01
    assert set(y.unique().tolist()) == {0.0, torch.tensor(1 / 0.7, dtype=torch.bfloat16).item()}


def test_module_follows_train_and_eval_and_the_seed():
    module = Dropout(0.3)
    x = torch.randn(16, 16)
    torch.manual_seed(3)
    first = module(x)
    torch.manual_seed(3)
    assert torch.equal(module(x), first) and not torch.equal(first, x)
    module.eval()
    assert module(x) is x
