"""A Transformer checkpoint as a CTranslate2 model, built with CTranslate2's own spec API.

`ctranslate2.specs.TransformerSpec` describes the model layer by layer; our modules map onto it
one to one, post-norm or pre-norm alike (CTranslate2 applies each sub-layer's LayerNorm before or
after the residual sum as `pre_norm` says, and pre-norm stacks end with the final LayerNorm):

| ours | CTranslate2 spec |
| --- | --- |
| `encoder_embed`, `decoder_embed` (times sqrt(d_model)) | `embeddings` with `scale_embeddings` |
| `encoder_positions.table`, `decoder_positions.table` | `position_encodings.encodings` (sinusoidal or learned, exactly ours) |
| `SelfAttention.qkv_proj` ([W^Q; W^K; W^V], one fused matrix) | `self_attention.linear[0]` (the same fused layout) |
| `CrossAttention.q_proj`, `kv_proj` ([W^K; W^V]) | `attention.linear[0]`, `attention.linear[1]` |
| `out_proj` | `linear[-1]` |
| `self_attn_norm`, `cross_attn_norm`, `ffn_norm` | `self_attention.layer_norm`, `attention.layer_norm`, `ffn.layer_norm` |
| `ffn.fc1`, `ffn.fc2` (ReLU) | `ffn.linear_0`, `ffn.linear_1` |
| `encoder_norm`, `decoder_norm` (pre-norm) | `layer_norm` |
| the tied output projection | `decoder.projection` (the decoder embedding matrix, no bias) |

The vocabulary is our sentencepiece model's pieces in id order, so ids line up with ours; id 0
(`<pad>`) is written as `<blank>`, CTranslate2's (and OpenNMT's) name for padding. The special
tokens are the pieces of ids 1-3: `<unk>`, `<s>` (the decoder starts from it, as ours from BOS) and
`</s>`, which CTranslate2 appends to every source (`add_source_eos`), as our collater does.
Translate with pieces from the `sentencepiece.model` written beside the model, and pass
`suppress_sequences=[["<blank>"], ["<s>"]]` to forbid what our search never outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor, nn

from transformer_mt.export.common import ExportError, require
from transformer_mt.models.transformer import Transformer

PAD_TOKEN = "<blank>"
SPM_FILE = "sentencepiece.model"
CPU_INT8 = ("int8", "int8_float32")  # int8 weights, float32 elsewhere: the CPU's int8 types


def export_ctranslate2(
    model: Transformer,
    pieces: list[str],
    output: Path,
    *,
    sentencepiece: bytes | None = None,
    quantization: str | None = None,
) -> None:
    """Write `model` with the vocabulary `pieces` (one per id) as a CTranslate2 model in `output`
    (an existing, empty folder), with weights in `quantization` (None: float32)."""
    ctranslate2 = require("ctranslate2")
    from ctranslate2.converters.converter import Converter
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    if quantization is not None and quantization not in ACCEPTED_MODEL_TYPES:
        raise ExportError(
            f"quantization={quantization!r} is not one CTranslate2 {ctranslate2.__version__} knows: "
            f"{', '.join(ACCEPTED_MODEL_TYPES)}"
        )
    spec = transformer_spec(model, pieces)
    if quantization in CPU_INT8:
        quantize_int8_weights(spec)
        quantization = None  # the weights are int8 already, everything else stays float32

    class FromTransformerMT(Converter):  # CTranslate2's extension point for a converter of one's own
        def _load(self):
            return spec

    FromTransformerMT().convert(str(output), quantization=quantization, force=True)
    if sentencepiece is not None:
        (output / SPM_FILE).write_bytes(sentencepiece)


def transformer_spec(model: Transformer, pieces: list[str]):
    """The `ctranslate2.specs.TransformerSpec` of `model`, its weights and vocabulary set."""
    require("ctranslate2")
    from ctranslate2.specs import common_spec, transformer_spec

    if len(pieces) != model.vocab_size:
        raise ExportError(f"{len(pieces)} vocabulary pieces for a model of {model.vocab_size} outputs")
    cfg = model.cfg
    pre_norm = cfg.norm == "pre"
    encoder = transformer_spec.TransformerEncoderSpec(
        cfg.encoder_layers, cfg.heads, pre_norm=pre_norm, activation=common_spec.Activation.RELU
    )
    decoder = transformer_spec.TransformerDecoderSpec(
        cfg.decoder_layers, cfg.heads, pre_norm=pre_norm, activation=common_spec.Activation.RELU
    )
    spec = transformer_spec.TransformerSpec(encoder, decoder)

    _embedding(encoder.embeddings[0], model.encoder_embed.weight)
    _embedding(decoder.embeddings, model.decoder_embed.weight)
    encoder.scale_embeddings = decoder.scale_embeddings = True  # times sqrt(d_model), as ours
    encoder.position_encodings.encodings = _array(model.encoder_positions.table)
    decoder.position_encodings.encodings = _array(model.decoder_positions.table)
    decoder.projection.weight = _array(model.decoder_embed.weight)  # tied, no bias
    if pre_norm:
        _layer_norm(encoder.layer_norm, model.encoder_norm)
        _layer_norm(decoder.layer_norm, model.decoder_norm)

    for layer_spec, layer in zip(encoder.layer, model.encoder_layers, strict=True):
        _attention(layer_spec.self_attention, [layer.self_attn.qkv_proj], layer.self_attn.out_proj)
        _layer_norm(layer_spec.self_attention.layer_norm, layer.self_attn_norm)
        _ffn(layer_spec.ffn, layer.ffn, layer.ffn_norm)
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers, strict=True):
        _attention(layer_spec.self_attention, [layer.self_attn.qkv_proj], layer.self_attn.out_proj)
        _layer_norm(layer_spec.self_attention.layer_norm, layer.self_attn_norm)
        cross = layer.cross_attn
        _attention(layer_spec.attention, [cross.q_proj, cross.kv_proj], cross.out_proj)
        _layer_norm(layer_spec.attention.layer_norm, layer.cross_attn_norm)
        _ffn(layer_spec.ffn, layer.ffn, layer.ffn_norm)

    tokens = [PAD_TOKEN, *pieces[1:]]
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = pieces[1], pieces[2], pieces[3]
    spec.config.decoder_start_token = pieces[2]  # BOS, as our decoder starts
    spec.config.add_source_eos = True  # our sources end with EOS
    spec.config.add_source_bos = False
    spec.config.layer_norm_epsilon = model.decoder_layers[0].ffn_norm.eps
    return spec


def quantize_int8_weights(spec) -> None:
    """Store every matrix of `spec` as int8 with one scale per row, as CTranslate2's own `int8` does,
    except that the matrices of products use 7 bits (-63..63) and the embeddings the full 8.

    Why 7: CTranslate2 multiplies int8 activations shifted to 0..255 by these weights; on an x86 CPU
    without VNNI, oneDNN's kernel sums each pair of products in int16 first (vpmaddubsw), which
    saturates once 255 * |w| * 2 > 32767, i.e. for |w| > 64. With 8-bit weights that lost 2.6 BLEU on
    an AVX2-only EPYC (the sample's model of tests/test_export.py, 33.38 -> 30.76); with 7 bits no
    pair can overflow, so the products are exact integer sums on every CPU and the decoding is the
    same with and without VNNI. The seventh bit halves the weights' resolution, not their range.
    """
    from ctranslate2.specs import common_spec
    from ctranslate2.specs.model_spec import visit_spec

    def quantize(layer, name: str, value) -> None:  # called for every variable of every layer
        levels = {common_spec.LinearSpec: 63.0, common_spec.EmbeddingsSpec: 127.0}.get(type(layer))
        if levels is None or not name.endswith("weight"):
            return
        amax = np.abs(value).max(axis=1)
        scale = levels / np.where(amax > 0, amax, 1.0)
        layer.weight = np.rint(value * scale[:, None]).astype(np.int8)
        layer.weight_scale = scale.astype(np.float32)

    visit_spec(spec, quantize)


def _array(tensor: Tensor):
    return tensor.detach().float().cpu().contiguous().numpy()


def _embedding(spec, weight: Tensor) -> None:
    spec.weight = _array(weight)


def _linear(spec, linear: nn.Linear) -> None:
    spec.weight = _array(linear.weight)  # (out, in), as CTranslate2 stores it
    if linear.bias is not None:
        spec.bias = _array(linear.bias)


def _layer_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _attention(spec, inputs: list[nn.Linear], out_proj: nn.Linear) -> None:
    """Self-attention: [qkv]; cross-attention: [q, kv]; both in CTranslate2's fused layout already."""
    for linear_spec, linear in zip(spec.linear[: len(inputs)], inputs, strict=True):
        _linear(linear_spec, linear)
    _linear(spec.linear[-1], out_proj)


def _ffn(spec, ffn, norm: nn.LayerNorm) -> None:
    _layer_norm(spec.layer_norm, norm)
    _linear(spec.linear_0, ffn.fc1)
    _linear(spec.linear_1, ffn.fc2)


__all__ = ["PAD_TOKEN", "SPM_FILE", "export_ctranslate2", "quantize_int8_weights", "transformer_spec"]
