"""A post-norm Transformer checkpoint as a Hugging Face `MarianMTModel` folder (`save_pretrained`).

MarianMT is the Transformer of the paper as Hugging Face writes it, and ours maps onto its options:

| ours | MarianConfig |
| --- | --- |
| post-norm sub-layers, no final LayerNorm | the only layout MarianMT has (pre-norm is refused) |
| embeddings times sqrt(d_model) | `scale_embedding=True` |
| sinusoidal positions from 0, source and target | `MarianSinusoidalPositionalEmbedding` (see below) |
| ReLU feed-forward, biases on every projection | `activation_function="relu"`; Marian's projections have biases |
| LayerNorm eps 1e-5 | `nn.LayerNorm`'s default, as ours |
| one matrix for source, target and output (`share_embeddings`) | `share_encoder_decoder_embeddings`, `tie_word_embeddings` |
| no output bias | `final_logits_bias` of zeros |
| ids pad 0, unk 1, bos 2, eos 3; the decoder starts from BOS | `pad_token_id=0`, `eos_token_id=3`, `decoder_start_token_id=2` |

One difference is a permutation. Marian's sinusoidal table puts the sines in the first half of each
position vector and the cosines in the second (`[sin(p w_0), .., sin(p w_{d/2-1}), cos(p w_0), ..]`),
ours interleaves them (`[sin(p w_0), cos(p w_0), sin(p w_1), ..]`), and Marian rebuilds its table on
loading, so it cannot be overwritten. The same model in a permuted basis of the d_model-dimensional
residual stream gives Marian's layout exactly: position j of Marian's vectors holds our component
`perm[j] = [0, 2, 4, .., 1, 3, 5, ..][j]`. Every matrix that reads the residual stream has its
columns permuted (the embeddings, W^Q, W^K, W^V, W_1), every one that writes it its rows (W^O, W_2,
their biases), and the LayerNorm gains and biases follow; LayerNorm, attention and the output
logits are unchanged by a permutation, so the exported model computes what ours does, up to float
rounding (and Marian's table is computed in float64, ours in float32).

The tokenizer is a `MarianTokenizer` over our sentencepiece model (as `source.spm` and `target.spm`)
with a `vocab.json` mapping each piece to our id: it segments with the very same model and appends
EOS, so it gives our ids. `generation_config.json` forbids PAD and BOS (our search never outputs
them), forces EOS at the maximum length (as ours does), and carries the run's beam size and length
penalty; Hugging Face divides a hypothesis' log-probability by length ** alpha, where we use
((5 + length) / 6) ** alpha.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transformer_mt.export.common import ExportError, require
from transformer_mt.models.transformer import Transformer

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def residual_permutation(d_model: int) -> Tensor:
    """perm[j]: the component of our residual stream at position j of Marian's (sines, then cosines)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def marian_config(model: Transformer, pieces: list[str]):
    transformers = require("transformers")
    cfg = model.cfg
    if cfg.norm != "post" or cfg.positions != "sinusoidal" or cfg.attention_window is not None:
        raise ExportError(
            f"norm={cfg.norm}, positions={cfg.positions}, attention_window={cfg.attention_window}: "
            "MarianMTModel is post-norm with sinusoidal positions and full attention; use format=ctranslate2"
        )
    if len(pieces) != model.vocab_size:
        raise ExportError(f"{len(pieces)} vocabulary pieces for a model of {model.vocab_size} outputs")
    return transformers.MarianConfig(
        vocab_size=model.vocab_size,
        decoder_vocab_size=model.vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        activation_function="relu",
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        max_position_embeddings=cfg.max_positions,
        scale_embedding=True,
        share_encoder_decoder_embeddings=cfg.share_embeddings,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=EOS_ID,
    )


def marian_model(model: Transformer, pieces: list[str]):
    """A `MarianMTModel` (in eval mode) computing what `model` computes."""
    transformers = require("transformers")
    config = marian_config(model, pieces)
    marian = transformers.MarianMTModel(config).eval()
    perm = residual_permutation(model.cfg.d_model)

    def reads(weight: Tensor) -> Tensor:  # (out, d_model): a matrix applied to the residual stream
        return weight[:, perm]

    def writes(weight: Tensor) -> Tensor:  # (d_model, ...): a matrix or bias adding to the stream
        return weight[perm]

    def reading(target: nn.Linear, weight: Tensor, bias: Tensor) -> None:  # W^Q, W^K, W^V, W_1
        target.weight.copy_(reads(weight))
        target.bias.copy_(bias)

    def writing(target: nn.Linear, source: nn.Linear) -> None:  # W^O, W_2
        target.weight.copy_(writes(source.weight))
        target.bias.copy_(writes(source.bias))

    def norm(target: nn.LayerNorm, source: nn.LayerNorm) -> None:
        target.weight.copy_(writes(source.weight))
        target.bias.copy_(writes(source.bias))

    def projections(target, names: tuple[str, ...], fused: nn.Linear) -> None:
        """Split a fused [W^Q; W^K; W^V] or [W^K; W^V] into Marian's separate projections."""
        d = model.cfg.d_model
        for i, name in enumerate(names):
            rows = slice(i * d, (i + 1) * d)
            reading(getattr(target, name), fused.weight[rows], fused.bias[rows])

    with torch.no_grad():
        encoder, decoder = marian.model.encoder, marian.model.decoder
        encoder.embed_tokens.weight.copy_(reads(model.encoder_embed.weight))
        decoder.embed_tokens.weight.copy_(reads(model.decoder_embed.weight))
        marian.lm_head.weight.copy_(reads(model.decoder_embed.weight))
        for ours, theirs in zip(model.encoder_layers, encoder.layers, strict=True):
            projections(theirs.self_attn, ("q_proj", "k_proj", "v_proj"), ours.self_attn.qkv_proj)
            writing(theirs.self_attn.out_proj, ours.self_attn.out_proj)
            norm(theirs.self_attn_layer_norm, ours.self_attn_norm)
            reading(theirs.fc1, ours.ffn.fc1.weight, ours.ffn.fc1.bias)
            writing(theirs.fc2, ours.ffn.fc2)
            norm(theirs.final_layer_norm, ours.ffn_norm)
        for ours, theirs in zip(model.decoder_layers, decoder.layers, strict=True):
            projections(theirs.self_attn, ("q_proj", "k_proj", "v_proj"), ours.self_attn.qkv_proj)
            writing(theirs.self_attn.out_proj, ours.self_attn.out_proj)
            norm(theirs.self_attn_layer_norm, ours.self_attn_norm)
            projections(theirs.encoder_attn, ("q_proj",), ours.cross_attn.q_proj)
            projections(theirs.encoder_attn, ("k_proj", "v_proj"), ours.cross_attn.kv_proj)
            writing(theirs.encoder_attn.out_proj, ours.cross_attn.out_proj)
            norm(theirs.encoder_attn_layer_norm, ours.cross_attn_norm)
            reading(theirs.fc1, ours.ffn.fc1.weight, ours.ffn.fc1.bias)
            writing(theirs.fc2, ours.ffn.fc2)
            norm(theirs.final_layer_norm, ours.ffn_norm)
        marian.final_logits_bias.zero_()
    return marian


def generation_config(marian, decoding: dict[str, Any]):
    """How `generate` should decode by default: as our search does, with the run's beam settings."""
    transformers = require("transformers")
    return transformers.GenerationConfig(
        decoder_start_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        forced_eos_token_id=EOS_ID,
        suppress_tokens=[PAD_ID, BOS_ID],  # never output, as in our search
        max_length=marian.config.max_position_embeddings,
        num_beams=int(decoding.get("beam", 4)),
        length_penalty=float(decoding.get("lenpen", 0.6)),
        early_stopping=True,  # stop a sentence at `num_beams` finished hypotheses, as ours
    )


def marian_tokenizer(pieces: list[str], sentencepiece: bytes, folder: Path, max_positions: int):
    """A MarianTokenizer over our sentencepiece model, with a vocab.json in our id order."""
    transformers = require("transformers")
    require("sentencepiece")
    spm_path = folder / "source.spm"
    spm_path.write_bytes(sentencepiece)
    (folder / "target.spm").write_bytes(sentencepiece)
    vocab_path = folder / "vocab.json"
    vocab_path.write_text(json.dumps({piece: i for i, piece in enumerate(pieces)}, ensure_ascii=False))
    return transformers.MarianTokenizer(
        source_spm=str(spm_path),
        target_spm=str(folder / "target.spm"),
        vocab=str(vocab_path),
        unk_token=pieces[UNK_ID],
        eos_token=pieces[EOS_ID],
        pad_token=pieces[PAD_ID],
        model_max_length=max_positions,
        # A literal "</s>" or "<unk>" in the text is text, as for our sentencepiece model.
        split_special_tokens=True,
    )


def export_huggingface(
    model: Transformer,
    pieces: list[str],
    output: Path,
    *,
    sentencepiece: bytes | None = None,
    decoding: dict[str, Any] | None = None,
) -> None:
    """Write `model` (and, given the sentencepiece model, its tokenizer) as a MarianMTModel folder."""
    marian = marian_model(model, pieces)
    marian.generation_config = generation_config(marian, decoding or {})
    marian.save_pretrained(str(output))
    if sentencepiece is not None:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer = marian_tokenizer(pieces, sentencepiece, Path(folder), model.cfg.max_positions)
            tokenizer.save_pretrained(str(output))
        (output / "sentencepiece.model").write_bytes(sentencepiece)


__all__ = [
    "export_huggingface",
    "generation_config",
    "marian_model",
    "marian_tokenizer",
    "residual_permutation",
]
