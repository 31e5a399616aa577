"""int8 decoding on a CPU (`translate quantize=int8`, `evaluate quantize=int8`).

Dynamic quantization: each linear layer's weights are stored as int8 with one scale per matrix,
and each product quantizes its input rows on the fly, multiplies in int8 (VNNI / AMX kernels of
fbgemm or oneDNN on x86, qnnpack on ARM) and returns fp32. Embeddings, layer norms, softmax and the
search stay in fp32. The Transformer's output projection, which is its (tied) embedding matrix and
the largest product of every decoding step, gets an int8 copy too; the embedding lookups keep the
fp32 matrix.

The API is `torch.ao.quantization.quantize_dynamic`. PyTorch marks it deprecated in favour of
torchao's `quantize_`, but on a CPU it is the one with int8 kernels: torchao's
`Int8DynamicActivationInt8WeightConfig` ran no faster than fp32 on a 128-row product here (torchao
0.18, torch 2.13, a Xeon with AMX), while `quantize_dynamic` ran about 3x faster. Its deprecation
warnings are silenced here; if a later torch drops it, `quantize=int8` says so.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from transformer_mt.models.interface import EncoderDecoder
from transformer_mt.models.transformer import Transformer

try:
    from torch.ao.quantization import quantize_dynamic
except ImportError:  # pragma: no cover - a torch that has removed it
    quantize_dynamic = None

QUANTIZATIONS = ("int8",)


def check_quantize(quantize: str | None, device: torch.device, precision: str) -> None:
    """A ValueError unless `quantize` (None for none) can run on `device` in `precision`."""
    if quantize is None:
        return
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize={quantize!r} is not one of: {', '.join(QUANTIZATIONS)} (or null for none)"
        )
    if device.type != "cpu":
        raise ValueError(
            f"quantize={quantize} is for decoding on a CPU (PyTorch's dynamic int8 products run only "
            f"there), but the device is {device.type}; use device=cpu, or precision=bf16/fp16 on the GPU"
        )
    if precision != "fp32":
        raise ValueError(
            f"quantize={quantize} multiplies in int8 and keeps the rest in fp32; it does not combine "
            f"with precision={precision} (use precision=fp32)"
        )
    if quantize_dynamic is None:
        raise ValueError(
            f"quantize={quantize} needs torch.ao.quantization.quantize_dynamic, which torch "
            f"{torch.__version__} no longer has"
        )


def quantize_int8(model: EncoderDecoder) -> EncoderDecoder:
    """An int8 copy of `model` for CPU decoding (the model itself is left as it is)."""
    check_quantize("int8", next(model.parameters()).device, "fp32")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated")
        quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)  # a quantized deep copy
        if isinstance(quantized, Transformer) and quantized.output_projection is None:
            tied = nn.Linear(quantized.cfg.d_model, quantized.vocab_size, bias=False)
            tied.weight = quantized.decoder_embed.weight  # (vocab, d_model), shared with the lookup
            quantized.output_projection = quantize_dynamic(
                nn.Sequential(tied), {nn.Linear}, dtype=torch.qint8
            )
    return quantized


__all__ = ["QUANTIZATIONS", "check_quantize", "quantize_int8"]
