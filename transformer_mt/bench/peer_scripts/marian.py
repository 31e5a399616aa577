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
        max_position_embeddings=max(args["src_len"], args["out_len"]) + 2,
        pad_token_id=pad_id(args),
        eos_token_id=EOS,
        decoder_start_token_id=pad_id(args),
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )
    torch.manual_seed(args["seed"])
    return MarianMTModel(config).eval()


def random_sources(args: dict[str, Any]) -> torch.Tensor:
    """(batch, src_len) random word ids (neither special) with a final EOS, as ours are made."""
    gen = torch.Generator().manual_seed(args["seed"])
    src = torch.randint(4, pad_id(args), (args["batch_size"], args["src_len"]), generator=gen)
    src[:, -1] = EOS
    return src


def token_names(args: dict[str, Any]) -> list[str]:
    """A name per id, for CTranslate2, which takes tokens as strings."""
    names = [f"w{i}" for i in range(args["vocab_size"])]
    names[EOS], names[UNK], names[pad_id(args)] = "</s>", "<unk>", "<pad>"
    return names
