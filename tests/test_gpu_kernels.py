"""The attention kernels and decoding on the GPU: SDPA's fused kernels equal its math kernel, and
cached decoding equals full decoding, on `tests.devices.DEVICE` (CUDA; TRANSFORMER_MT_TEST_DEVICE=cpu
runs the same bodies on the CPU, where only the flash kernel exists).

Every attention product of the models goes through `scaled_dot_product_attention` (models/attention.py),
which picks a kernel per call: flash (fp16/bf16, no mask but `is_causal`), memory-efficient (any
mask) or math (the explicit softmax). Each fused kernel is forced here on the inputs the models
really give it, padding masks and the restricted window's block masks included, forward and
backward, and compared with the math kernel on the same inputs, and with a float64 reference.

Tolerances, as relative errors ||got - want|| / ||want||: a fused kernel must be within
max(FLOOR, 4 x the math kernel's own error against float64) of both the math kernel and float64.
The math kernel's error is its rounding in the precision at hand, so the bound follows the device's
arithmetic; the floors are about 5x what the CPU's kernels show (measured: fp32 ~3e-7, bf16 ~3e-3,
fp16 ~4e-4, which is the rounding of the output to its dtype). The whole model under autocast
compounds that over layers (measured on the CPU: logits bf16 5e-3, fp16 6e-4; all gradients bf16
1e-2, fp16 4e-3), and is held to the same rule against a float64 copy of itself.
"""

from __future__ import annotations

import contextlib
import copy
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.devices import DEVICE, GPU, ON_GPU, bf16_supported
from tests.helpers import decode_step_by_step
from transformer_mt.decoding.search import DecodingConfig, generate
from transformer_mt.models.attention import dense_attention, local_attention
from transformer_mt.models.interface import EncoderDecoder, EncoderOutput
from transformer_mt.models.transformer import Transformer, TransformerConfig

pytestmark = GPU

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNEL_FLOOR = {"fp32": 2e-5, "bf16": 2e-2, "fp16": 3e-3}
MODEL_FLOOR = {  # (logits, all parameter gradients)
    "fp32": (1e-4, 1e-4),
    "bf16": (3e-2, 6e-2),
    "fp16": (5e-3, 2e-2),
}
FUSED = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
PAD, BOS, EOS, VOCAB = 0, 2, 3, 500
WINDOW = 5
# batch 3 of 37 positions (not a multiple of any block size), 8 heads of 64 (the base model's)
BATCH, HEADS, LENGTH, HEAD_DIM = 3, 8, 37, 64
LENGTHS = [37, 20, 5]  # real positions per sentence; the rest is padding


def attention_case(case: str, q, k, v, pad):
    """The attention call the models make in each situation (models/attention.py)."""
    match case:
        case "full":  # encoder self-attention of a batch without padding
            return dense_attention(q, k, v)
        case "causal":  # decoder self-attention (teacher forcing)
            return dense_attention(q, k, v, causal=True)
        case "padding":  # encoder self-attention and cross-attention over a padded source
            return dense_attention(q, k, v, padding_mask=pad)
        case "window":  # restricted self-attention of the encoder, padded
            return local_attention(q, k, v, WINDOW, padding_mask=pad)
        case "window_causal":  # restricted self-attention of the decoder
            return local_attention(q, k, v, WINDOW, causal=True)
    raise AssertionError(case)


CASES = ["full", "causal", "padding", "window", "window_causal"]
MASKED = {"padding", "window", "window_causal"}  # the calls that pass an attention mask


def unsupported(kernel: str, precision: str, case: str) -> str | None:
    """Why `kernel` has no implementation for these inputs on DEVICE (documented limits), or None."""
    if precision == "bf16" and not bf16_supported():
        return "bf16 needs a GPU of compute capability 8.0 or later"
    if kernel == "efficient" and not ON_GPU:
        return "the memory-efficient SDPA kernel has no CPU implementation"
    if kernel == "flash" and ON_GPU:
        if torch.cuda.get_device_capability(DEVICE) < (8, 0):
            return "PyTorch's flash kernel needs compute capability 8.0 or later"
        if precision == "fp32":
            return (
                "the CUDA flash kernel computes in fp16/bf16 only (fp32 goes to the memory-efficient kernel)"
            )
        if case in MASKED:
            return "the CUDA flash kernel takes no attention mask (is_causal only): masked calls go to the memory-efficient kernel"
    return None


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64; inf if `got` holds a NaN or an inf."""
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def tolerance(floor: float, math_error: float) -> float:
    """The bound for a fused kernel: the floor, or 4x the math kernel's own rounding error if larger."""
    return max(floor, 4 * math_error)


def forward_backward(case: str, inputs, grad_out, pad, backends):
    """Output and (dq, dk, dv) of one attention call with only `backends` allowed."""
    q, k, v = (t.detach().clone().requires_grad_() for t in inputs)
    with sdpa_kernel(backends):
        out = attention_case(case, q, k, v, pad)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in (q, k, v)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("kernel", FUSED)
def test_fused_attention_kernel_equals_math_kernel(kernel, precision, case):
    reason = unsupported(kernel, precision, case)
    if reason:
        pytest.skip(reason)
    # other inputs for each combination
    torch.manual_seed(zlib.crc32(f"{kernel} {precision} {case}".encode()))
    dtype = DTYPES[precision]
    shape = (BATCH, HEADS, LENGTH, HEAD_DIM)
    inputs = [torch.randn(shape, device=DEVICE) for _ in range(3)]
    grad_out = torch.randn(shape, device=DEVICE)
    pad = torch.arange(LENGTH, device=DEVICE)[None, :] >= torch.tensor(LENGTHS, device=DEVICE)[:, None]
    low = [t.to(dtype) for t in inputs]

    fused = forward_backward(case, low, grad_out.to(dtype), pad, [FUSED[kernel]])
    math = forward_backward(case, low, grad_out.to(dtype), pad, [SDPBackend.MATH])
    exact = forward_backward(
        case, [t.double() for t in low], grad_out.to(dtype).double(), pad, [SDPBackend.MATH]
    )

    for name, got, want, ref in zip(
        ("output", "dq", "dk", "dv"),
        [fused[0], *fused[1]],
        [math[0], *math[1]],
        [exact[0], *exact[1]],
        strict=True,
    ):
        math_error = relative_error(want, ref)
        bound = tolerance(KERNEL_FLOOR[precision], math_error)
        against_math, against_exact = relative_error(got, want), relative_error(got, ref)
        assert against_math <= bound and against_exact <= bound, (
            f"{kernel} {precision} {case} {name}: relative error {against_math:.2e} against the math kernel, "
            f"{against_exact:.2e} against float64 (math kernel: {math_error:.2e}; tolerance {bound:.1e})"
        )


def tiny_transformer(window: int | None) -> Transformer:
    """Heads of 64 dimensions, as the presets have, so that every fused kernel accepts them."""
    cfg = TransformerConfig(
        d_model=256,
        ffn_dim=512,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        attention_window=window,
        max_positions=128,
    )
    return Transformer(cfg, vocab_size=VOCAB, pad_id=PAD).to(DEVICE)


def padded_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded source batch, and a padded target (decoder input and what it predicts)."""
    src = torch.randint(4, VOCAB, (4, 29), generator=generator)
    src[1, 20:], src[2, 7:] = PAD, PAD
    target = torch.randint(4, VOCAB, (4, 23), generator=generator)
    target[0, 15:], target[3, 9:] = PAD, PAD
    prev = torch.cat([torch.full((4, 1), BOS), target[:, :-1]], dim=1)
    return src.to(DEVICE), prev.to(DEVICE), target.to(DEVICE)


def model_step(
    model: Transformer, batch, dtype: torch.dtype | None, backends
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the concatenated parameter gradients of one training step's forward and backward,
    under autocast to `dtype` (None: none)."""
    src, prev, target = batch
    model.zero_grad(set_to_none=True)
    autocast = torch.autocast(DEVICE.type, dtype=dtype) if dtype else contextlib.nullcontext()
    kernels = sdpa_kernel(backends) if backends else contextlib.nullcontext()  # None: SDPA's own choice
    with kernels, autocast:
        logits = model(src, prev)
    scores = logits if logits.dtype == torch.float64 else logits.float()  # (batch, tgt_len, vocab)
    loss = F.cross_entropy(scores.flatten(0, 1), target.flatten(), ignore_index=PAD, label_smoothing=0.1)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return logits.detach().double(), grads.double()


@pytest.mark.parametrize("window", [None, WINDOW])
@pytest.mark.parametrize("precision", DTYPES)
def test_whole_model_on_fused_kernels_equals_math_under_autocast(precision, window):
    """A training step of a Transformer with padding (and the window) with the math kernel ruled out:
    every attention call must find a fused kernel, and the step must equal the math kernel's, both
    under autocast (fp32: none). Then with SDPA's own choice, which is what training runs."""
    if precision == "bf16" and not bf16_supported():
        pytest.skip("bf16 needs a GPU of compute capability 8.0 or later")
    torch.manual_seed(0)
    model = tiny_transformer(window)
    batch = padded_batch(torch.Generator().manual_seed(1))
    dtype = None if precision == "fp32" else DTYPES[precision]
    fused = [FUSED["flash"], FUSED["efficient"]] if ON_GPU else [FUSED["flash"]]
    exact = model_step(copy.deepcopy(model).double(), batch, None, [SDPBackend.MATH])
    want = model_step(model, batch, dtype, [SDPBackend.MATH])
    floors = MODEL_FLOOR[precision]
    bounds = [tolerance(floor, relative_error(w, e)) for floor, w, e in zip(floors, want, exact, strict=True)]
    for name, backends in (("fused only", fused), ("SDPA's choice", None)):
        got = model_step(model, batch, dtype, backends)
        for what, g, w, e, bound in zip(("logits", "gradients"), got, want, exact, bounds, strict=True):
            against_math, against_exact = relative_error(g, w), relative_error(g, e)
            assert against_math <= bound and against_exact <= bound, (
                f"{name}, {precision}, window {window}: {what} {against_math:.2e} against the math kernel, "
                f"{against_exact:.2e} against float64 (math kernel: {relative_error(w, e):.2e}; "
                f"tolerance {bound:.1e})"
            )


@pytest.mark.parametrize("window", [None, 2])
def test_cached_decoding_matches_full_on_device(window):
    """Step-by-step decoding with a DecoderState, reordered halfway as beam search does, gives the
    logits of teacher-forced decoding of the reordered batch (fp32)."""
    torch.manual_seed(0)
    model = tiny_transformer(window).eval()
    src, prev, _ = padded_batch(torch.Generator().manual_seed(2))
    order, reorder_at = torch.tensor([2, 0, 3, 1], device=DEVICE), 9
    with torch.inference_mode():
        stepwise, prev, _ = decode_step_by_step(model, src, prev, order, reorder_at)
        full = model(src[order], prev)
    torch.testing.assert_close(stepwise, full, atol=1e-4, rtol=1e-4)


class FullRecompute(EncoderDecoder):
    """The model without a cache: each incremental step decodes the whole prefix again."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model, self.pad_id = model, model.pad_id

    @property
    def max_positions(self) -> int | None:
        return self.model.max_positions

    def encode(self, src_tokens: torch.Tensor) -> EncoderOutput:
        return self.model.encode(src_tokens)

    def decode(self, prev_tokens, memory, state):
        if state is None:
            return self.model.decode(prev_tokens, memory, None)
        prefix = (
            prev_tokens if "prefix" not in state.cache else torch.cat([state.cache["prefix"], prev_tokens], 1)
        )
        state.cache["prefix"], state.steps = prefix, state.steps + 1
        logits, _ = self.model.decode(prefix, memory, None)
        return logits[:, -1:], state


@pytest.mark.parametrize("beam", [1, 4])
def test_beam_search_with_the_cache_equals_full_recompute_on_device(beam):
    """The search the translator runs, on the device: the same hypotheses and scores with the
    model's cache as with every prefix decoded again."""
    torch.manual_seed(0)
    model = tiny_transformer(None).eval()
    src, _, _ = padded_batch(torch.Generator().manual_seed(3))
    cfg = DecodingConfig(beam=beam, nbest=beam, lenpen=0.6, max_len_a=0.0, max_len_b=12)
    ids = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}
    cached = generate([model], src, cfg, **ids)
    recomputed = generate([FullRecompute(model)], src, cfg, **ids)
    for fast, slow in zip(cached, recomputed, strict=True):
        assert [h.tokens for h in fast] == [h.tokens for h in slow]
        assert [h.score for h in fast] == pytest.approx([h.score for h in slow], abs=1e-4)
    assert any(len(h.tokens) > 0 for hyps in cached for h in hyps)  # it decoded something
