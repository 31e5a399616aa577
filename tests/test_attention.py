"""Multi-head attention and restricted (block-local) self-attention against explicit references."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from transformer_mt.models.attention import CrossAttention, SelfAttention, local_attention
from transformer_mt.models.interface import DecoderState


def reference_attention(q, k, v, allowed):
    """softmax(Q K^T / sqrt(d_k)) V written out; allowed: bool, broadcastable to (batch, heads, q_len, k_len)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def band(n, window, causal):
    """(n, n) bool: may query i see key j under a window (None: no window)?"""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = torch.ones(n, n, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() <= window
    return allowed


def padding(lengths, n):
    """(batch, n) bool, True at padding."""
    return torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]


def separate_projections(attn):
    """W^Q, W^K, W^V and their biases, cut out of the module's fused projections."""
    weight = torch.cat([proj.weight for proj in attn.input_projections()])
    bias = torch.cat([proj.bias for proj in attn.input_projections()])
    return (*weight.chunk(3), *bias.chunk(3))


def explicit_module_attention(attn, x, memory, allowed):
    """What an attention module should compute, from its own weights and an explicit mask."""

    def heads(t):
        return t.view(t.size(0), t.size(1), attn.heads, attn.head_dim).transpose(1, 2)

    w_q, w_k, w_v, b_q, b_k, b_v = separate_projections(attn)
    q = heads(x @ w_q.T + b_q)
    k = heads(memory @ w_k.T + b_k)
    v = heads(memory @ w_v.T + b_v)
    out = reference_attention(q, k, v, allowed).transpose(1, 2).reshape(x.shape)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_self_attention_matches_explicit_softmax(causal, padded):
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, causal=causal).eval()
    x = torch.randn(3, 6, 16)
    pad = padding([6, 4, 2], 6) if padded else None
    allowed = band(6, None, causal)[None, None]
    if padded:
        allowed = allowed & ~pad[:, None, None, :]
    real = ~padding([6, 4, 2], 6) if padded else torch.ones(3, 6, dtype=torch.bool)
    got, want = attn(x, pad), explicit_module_attention(attn, x, x, allowed)
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_explicit_softmax_and_caches_memory_once():
    torch.manual_seed(0)
    attn = CrossAttention(16, 4).eval()
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    pad = padding([7, 3, 1], 7)
    want = explicit_module_attention(attn, x, memory, ~pad[:, None, None, :])
    torch.testing.assert_close(attn(x, memory, pad), want, atol=1e-5, rtol=1e-5)

    state = DecoderState()
    first = attn(x[:, :1], memory, pad, state)
    k = state.source_cache["cross.k"]
    # Later steps read the cache: a different memory tensor must not be looked at any more.
    second = attn(x[:, 1:2], torch.zeros_like(memory), pad, state)
    assert state.source_cache["cross.k"] is k and k.shape == (3, 4, 7, 4) and not state.cache
    torch.testing.assert_close(torch.cat([first, second], 1), want[:, :2], atol=1e-5, rtol=1e-5)


CASES = [(1, 1), (5, 1), (7, 3), (8, 4), (12, 5), (16, 2), (10, 9), (3, 10), (6, 6)]


@pytest.mark.parametrize(("n", "window"), CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_local_attention_equals_dense_band_reference(n, window, causal, padded):
    torch.manual_seed(n * 100 + window)
    q, k, v = (torch.randn(3, 2, n, 4) for _ in range(3))
    lengths = [n, max(1, (n + 1) // 2), 1] if padded else [n, n, n]
    pad = padding(lengths, n)
    allowed = band(n, window, causal)[None, None] & ~pad[:, None, None, :]
    got = local_attention(q, k, v, window, padding_mask=pad if padded else None, causal=causal)
    want = reference_attention(q, k, v, allowed)
    assert got.shape == q.shape and torch.isfinite(got).all()  # padded queries too: no NaN leaks
    real = ~pad  # the outputs at padded queries are never read
    torch.testing.assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)


def test_padded_query_with_no_word_in_its_band_attends_to_itself():
    """A fully masked row would be NaN on some kernels (and 0 * NaN poisons the next layer): such a
    query sees only itself."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 4) for _ in range(3))
    got = local_attention(q, k, v, 2, padding_mask=padding([3], 12))
    torch.testing.assert_close(got[:, :, 5:], v[:, :, 5:])  # positions 5.. are more than 2 from any word


@pytest.mark.parametrize("causal", [False, True])
def test_window_gradient_probe_sees_only_the_band(causal):
    """Output i depends on input j exactly when j is within the window (and not padding)."""
    torch.manual_seed(0)
    n, window = 11, 3
    attn = SelfAttention(8, 2, causal=causal, window=window).double().eval()
    x = torch.randn(1, n, 8, dtype=torch.double, requires_grad=True)
    pad = None if causal else padding([9], n)
    out = attn(x, pad)
    expected = band(n, window, causal)
    if pad is not None:
        expected &= ~pad[0][None, :]
    for i in range(n if causal else 9):
        (grad,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)
        depends = grad[0].abs().sum(-1) > 0
        assert depends.tolist() == expected[i].tolist(), f"position {i}"


@pytest.mark.parametrize("causal", [False, True])
def test_local_attention_cost_grows_with_the_window_not_the_length(causal):
    """Block-local attention multiplies each block of r queries by 3r keys (causal: 2r), never n."""
    batch, heads, n, head_dim, window = 2, 2, 64, 8, 4
    q = torch.randn(batch, heads, n, head_dim)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        local_attention(q, q, q, window, causal=causal)
    keys_per_query = (2 if causal else 3) * window
    assert counter.get_total_flops() == 4 * batch * heads * n * keys_per_query * head_dim


def test_incremental_window_keeps_only_the_last_r_positions():
    torch.manual_seed(0)
    window, steps = 3, 9
    attn = SelfAttention(8, 2, causal=True, window=window, name="dec0.self").eval()
    x = torch.randn(2, steps, 8)
    state = DecoderState()
    outs = [attn(x[:, t : t + 1], state=state) for t in range(steps)]
    assert state.cache["dec0.self.k"].shape == (2, 2, window, 4)
    torch.testing.assert_close(torch.cat(outs, 1), attn(x), atol=1e-5, rtol=1e-5)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = SelfAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 6, 8)
    assert not torch.equal(attn(x), attn(x))
    attn.eval()
    assert torch.equal(attn(x), attn(x))


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_checkpoint_with_separate_projections_loads_into_fused_ones(kind):
    """State dicts saved before W^Q, W^K, W^V were fused (q_proj / k_proj / v_proj) still load."""
    torch.manual_seed(0)
    make = (lambda: SelfAttention(16, 4, causal=True)) if kind == "self" else (lambda: CrossAttention(16, 4))
    attn = make().eval()
    w_q, w_k, w_v, b_q, b_k, b_v = separate_projections(attn)
    old = {"out_proj.weight": attn.out_proj.weight, "out_proj.bias": attn.out_proj.bias}
    for name, weight, bias in (("q_proj", w_q, b_q), ("k_proj", w_k, b_k), ("v_proj", w_v, b_v)):
        old[f"{name}.weight"], old[f"{name}.bias"] = weight.detach().clone(), bias.detach().clone()

    loaded = make().eval()
    loaded.load_state_dict(old)  # strict: every old key used, every new one filled
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    if kind == "self":
        torch.testing.assert_close(loaded(x), attn(x))
    else:
        pad = padding([7, 4], 7)
        torch.testing.assert_close(loaded(x, memory, pad), attn(x, memory, pad))


def test_fused_projections_keep_the_xavier_bound_of_each_block():
    """Each d x d block of the fused matrix is Xavier-uniform with gain 1/sqrt(2), as separate ones were."""
    torch.manual_seed(0)
    d = 64
    bound = math.sqrt(6 / (2 * d)) / math.sqrt(2)
    for attn in (SelfAttention(d, 4), CrossAttention(d, 4)):
        weight = torch.cat([proj.weight for proj in attn.input_projections()])
        for block in weight.chunk(3):
            assert block.abs().max() <= bound and block.abs().max() > 0.95 * bound
        assert all(proj.bias.eq(0).all() for proj in attn.input_projections())
