"""A randomly initialised MarianMT model of the size of one of our Transformer presets.

MarianMT is the Transformer of the paper as Hugging Face implements it: post-norm layers, ReLU
feed-forward here (as ours), sinusoidal positions, embeddings scaled by sqrt(d_model) and shared
between encoder, decoder and output projection. The ids follow Marian's own layout, which
CTranslate2's converter expects: eos 0, unk 1, words, and pad last (vocab_size - 1), the decoder
starting from pad (a zero embedding). Only torch, transformers and the standard library are used.
"""

from __future__ import annotations

from typing import Any

import torch

EOS, UNK = 0, 1


def pad_id(args: dict[str, Any]) -> int:
    return args["vocab_size"] - 1


def marian_model(args: dict[str, Any]):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=args["vocab_size"],
        decoder_vocab_size=args["vocab_size"],
        d_model=args["d_model"],
        encoder_layers=args["encoder_layers"],
        decoder_layers=args["decoder_layers"],
        encoder_attention_heads=args["heads"],
        decoder_attention_heads=args["heads"],
        encoder_ffn_dim=args["ffn_dim"],
        decoder_ffn_dim=args["ffn_dim"],
        activation_function="relu",
        scale_embedding=True,
        max_position_embeddings=max([len(b[0]) for b in args["batches"]] + args["steps"]) + 2,
        pad_token_id=pad_id(args),
        eos_token_id=EOS,
        decoder_start_token_id=pad_id(args),
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )
    torch.manual_seed(args["seed"])
    return MarianMTModel(config).eval()


def marian_ids(args: dict[str, Any], rows: list[list[int]]) -> list[list[int]]:
    """transformer-mt's ids (pad 0, unk 1, bos 2, eos 3, words from 4), padding dropped, in
    Marian's layout: eos 0, unk 1, the words where they were (the one id that is Marian's pad,
    vocab_size - 1, moves to 2, free here), so both sides read the same sentences."""
    ours_pad, ours_unk, ours_eos = 0, 1, 3
    special = {ours_unk: UNK, ours_eos: EOS, pad_id(args): 2}
    return [[special.get(i, i) for i in row if i != ours_pad] for row in rows]


def batches(args: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """The harness's batches as (src, attention_mask, decoder steps), right-padded with Marian's pad."""
    out = []
    for rows, steps in zip(args["batches"], args["steps"], strict=True):
        sentences = marian_ids(args, rows)
        width = max(len(s) for s in sentences)
        src = torch.full((len(sentences), width), pad_id(args), dtype=torch.long)
        for row, ids in enumerate(sentences):
            src[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out.append((src, src.ne(pad_id(args)).long(), steps))
    return out


def token_names(args: dict[str, Any]) -> list[str]:
    """A name per id, for CTranslate2, which takes tokens as strings."""
    names = [f"w{i}" for i in range(args["vocab_size"])]
    names[EOS], names[UNK], names[pad_id(args)] = "</s>", "<unk>", "<pad>"
    return names
