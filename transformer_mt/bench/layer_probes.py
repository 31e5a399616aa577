"""The layer types of the paper's Table 1 (section 4), and how each of its three costs is measured.

Every layer maps (batch, n, d) to (batch, n, d). Attention is the project's own
(`models/attention.py`); the convolutions are causal (output i reads inputs at and before i, as in
ByteNet and the ConvS2S decoder), so that a stack's reach grows one way and its path length has a
closed form to check against; the cost of a layer is the same either way.

- `layer_flops`: analytic FLOPs of the forward pass (2 per multiply-add).
- `critical_path`: sequential operations, measured as the longest chain of dependent kernels from
  input to output, recorded op by op with a dispatch mode. Fused kernels hide their loops (one
  oneDNN or cuDNN call runs all n steps of an LSTM), so the chain is recorded with the reference
  kernels: oneDNN and cuDNN off, SDPA's math backend.
- `path_length`: the maximum path length, probed with gradients: the smallest depth L of a stack of
  such layers for which the last output has a non-zero gradient with respect to the first input.
  One LSTM layer already links every position, through n dependent cell steps; its probe stacks
  *steps* instead of layers (`lstm_sweep`), so that it counts the cell applications a signal crosses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from transformer_mt.models.attention import SelfAttention

LAYER_TYPES = (
    "self_attention",
    "restricted_attention",
    "recurrent",
    "convolution",
    "dilated_convolution",
    "separable_convolution",
)


class Recurrent(nn.Module):
    """One LSTM layer of width d (the recurrent row of Table 1)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


class Convolution(nn.Module):
    """Causal Conv1d of kernel k from d to d channels: output i reads inputs i - (k - 1) dilation .. i.
    `groups=d` makes it depthwise (one filter per channel)."""

    def __init__(self, d: int, kernel: int, *, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.left_pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(d, d, kernel, dilation=dilation, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x.transpose(1, 2), (self.left_pad, 0))  # (batch, d, left_pad + n)
        return self.conv(x).transpose(1, 2)  # (batch, n, d)


class SeparableConvolution(nn.Module):
    """Depthwise causal convolution of kernel k, then a pointwise d x d product (section 4)."""

    def __init__(self, d: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = Convolution(d, kernel, groups=d)
        self.pointwise = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def build_layer(
    kind: str, d: int, *, heads: int, window: int, kernel: int, dilation: int | None = None
) -> nn.Module:
    """One layer of `kind`. A single dilated convolution uses dilation k (the second layer of a
    1, k, k^2, ... stack); its cost does not depend on the dilation."""
    match kind:
        case "self_attention":
            return SelfAttention(d, heads)
        case "restricted_attention":
            return SelfAttention(d, heads, window=window)
        case "recurrent":
            return Recurrent(d)
        case "convolution":
            return Convolution(d, kernel)
        case "dilated_convolution":
            return Convolution(d, kernel, dilation=kernel if dilation is None else dilation)
        case "separable_convolution":
            return SeparableConvolution(d, kernel)
    raise ValueError(f"unknown layer type {kind!r}; choose from: {', '.join(LAYER_TYPES)}")


def layer_flops(kind: str, batch: int, n: int, d: int, *, window: int, kernel: int) -> int:
    """Forward FLOPs of one layer: 2 per multiply-add of its matrix products and convolutions.

    Elementwise work (biases, softmax, gate nonlinearities: O(n d) or O(n^2 h)) is not counted.
      self-attention      8 n d^2 (Q, K, V and output projections) + 4 n^2 d (Q K^T, and the weights times V)
      restricted          8 n d^2 + 4 n' (3r) d: blocks of r queries against 3 blocks of r keys, with
                          n' = ceil(n / r) r; dense (the line above) when r >= n - 1 covers every key
      recurrent (LSTM)    16 n d^2: 4 gates, each a d x d product of the input and one of the state
      convolution         2 k n d^2 (dilated or not)
      separable           2 k n d (depthwise) + 2 n d^2 (pointwise)
    All times `batch`.
    """
    match kind:
        case "self_attention":
            per_sequence = 8 * n * d * d + 4 * n * n * d
        case "restricted_attention" if window >= n - 1:
            per_sequence = 8 * n * d * d + 4 * n * n * d
        case "restricted_attention":
            padded = -(-n // window) * window
            per_sequence = 8 * n * d * d + 4 * padded * 3 * window * d
        case "recurrent":
            per_sequence = 16 * n * d * d
        case "convolution" | "dilated_convolution":
            per_sequence = 2 * kernel * n * d * d
        case "separable_convolution":
            per_sequence = 2 * kernel * n * d + 2 * n * d * d
        case _:
            raise ValueError(f"unknown layer type {kind!r}; choose from: {', '.join(LAYER_TYPES)}")
    return batch * per_sequence


# -------------------------------------------------------------------------------------------------
# Sequential operations and memory

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "convolution", "_convolution"}


class _CriticalPath(TorchDispatchMode):
    """Gives every tensor the length of the longest chain of dependent kernels that produced it
    (views are free), and of dependent matrix products."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = WeakTensorKeyDictionary()
        self.matmuls = WeakTensorKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        kernels = max((self.kernels.get(t, 0) for t in inputs), default=0)
        matmuls = max((self.matmuls.get(t, 0) for t in inputs), default=0)
        if not func.is_view:
            kernels += 1
            matmuls += func.overloadpacket.__name__ in MATMULS
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self.kernels[t], self.matmuls[t] = kernels, matmuls
        return out


@contextmanager
def reference_kernels() -> Iterator[None]:
    """No fused kernels that hide a loop: oneDNN and cuDNN off, SDPA's math backend."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN")
        with (
            torch.backends.mkldnn.flags(enabled=False),
            torch.backends.cudnn.flags(enabled=False),
            sdpa_kernel(SDPBackend.MATH),
        ):
            yield


def critical_path(layer: nn.Module, x: Tensor) -> tuple[int, int]:
    """(dependent kernels, dependent matrix products) on the longest chain from input to output."""
    with torch.no_grad(), reference_kernels(), _CriticalPath() as mode:
        y = layer(x)
    return mode.kernels.get(y, 0), mode.matmuls.get(y, 0)


def saved_activation_bytes(layer: nn.Module, x: Tensor) -> int:
    """Bytes of the tensors the forward pass saves for backward (parameters excluded, storages once):
    what a stack of such layers keeps per layer in training."""
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.detach().requires_grad_())
    return sum(storages.values())


# -------------------------------------------------------------------------------------------------
# Maximum path length, probed with gradients


def smallest_depth(reaches: Callable[[int], bool], limit: int) -> int | None:
    """The smallest L in 1..limit with reaches(L), for reaches monotone in L: doubling, then bisection.
    None if even `limit` does not reach."""
    lo, hi = 0, 1  # reaches(lo) is False: no layer, no link between two positions
    while not reaches(hi):
        if hi >= limit:
            return None
        lo, hi = hi, min(2 * hi, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi


def _rescaled(t: Tensor) -> Tensor:
    """`t`, whose gradient is rescaled on the way back to a largest entry of 1 at each position.

    A positive scale per position turns no zero into a non-zero nor back, but keeps a gradient that
    crosses hundreds of layers (a product of hundreds of small factors) from underflowing to an exact
    zero, which would read as "no path"."""

    def rescale(grad: Tensor) -> Tensor:
        peak = grad.abs().amax(dim=-1, keepdim=True)
        return torch.where(peak > 0, grad / peak.clamp_min(torch.finfo(grad.dtype).tiny), grad)

    if t.requires_grad:
        t.register_hook(rescale)
    return t


def links_first_to_last(forward: Callable[[Tensor], Tensor], x: Tensor) -> bool:
    """Whether the last output position has a non-zero gradient with respect to the first input."""
    x = x.detach().requires_grad_()
    y = forward(x)  # (1, n, d)
    probe = torch.randn(y.size(-1), dtype=y.dtype, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(y[0, -1] @ probe, x)
    return bool(grad[0, 0].ne(0).any())


def lstm_sweep(lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM cell step at every position at once, each reading the previous sweep's state one
    position earlier. x, h, c: (batch, n, d). From zero states, sweep K equals the LSTM's output at
    positions < K, and sweep n equals it everywhere: the recurrence as a stack of n dependent steps."""
    h_prev = F.pad(h, (0, 0, 1, 0))[:, :-1]  # (batch, n, d): the state before each position
    c_prev = F.pad(c, (0, 0, 1, 0))[:, :-1]
    gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(
        h_prev, lstm.weight_hh_l0, lstm.bias_hh_l0
    )
    i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def path_length(
    kind: str, n: int, *, d: int, window: int, kernel: int, heads: int = 2, seed: int = 0
) -> int | None:
    """The smallest number of stacked `kind` layers (float64, layer i seeded with seed + i) through
    which the first of n input positions reaches the last output; for the recurrence, the number of
    cell steps (`lstm_sweep`s). None if n are not enough.

    The dilated stack cycles through dilations 1, k, k^2, ... up to the largest below n, as ByteNet's."""
    powers = [1]
    while powers[-1] * kernel < n:
        powers.append(powers[-1] * kernel)
    layers: list[nn.Module] = []

    def stack(x: Tensor, depth: int) -> Tensor:
        if kind == "recurrent":
            h = c = torch.zeros_like(x)
            for _ in range(depth):
                h, c = lstm_sweep(layers[0].lstm, x, h, c)
                h, c = _rescaled(h), _rescaled(c)
            return h
        for layer in layers[:depth]:
            x = _rescaled(layer(x))
        return x

    def reaches(depth: int) -> bool:
        while len(layers) < (1 if kind == "recurrent" else depth):
            torch.manual_seed(seed + len(layers))
            dilation = powers[len(layers) % len(powers)]
            opts = {"heads": heads, "window": window, "kernel": kernel, "dilation": dilation}
            layers.append(build_layer(kind, d, **opts).double())
        return links_first_to_last(lambda t: stack(t, depth), x)

    x = torch.randn(1, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return smallest_depth(reaches, n)
