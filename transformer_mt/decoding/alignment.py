"""Alignments read from the model's own attention: for each target piece, the source piece it
attends to most (what fairseq's `--print-alignment` prints), and the same mapped to words.

The attention is that of the teacher-forced pass over the translation (`EncoderDecoder.attention`):
the last decoder layer's encoder-decoder attention, averaged over its heads (the LSTM's one
attention, ConvS2S's last decoder layer), and over the models of an ensemble. Target piece t is
aligned to the source piece (never the source's EOS) with the largest weight in the row of the
decoder position that predicted t. A piece belongs to the word that its last word-initial piece
("▁...", sentencepiece's mark of a preceding space) began, so word i is the i-th
whitespace-separated word of the input line (as sentencepiece normalised it) or of the translation.

Pairs are written `SOURCE-TARGET` with 0-based indices (the Pharaoh format of fast_align and
Moses), separated by spaces: one pair per target piece for pieces, the distinct word pairs (by
target word, then source word) for words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from transformer_mt.decoding.translator import Translation, Translator, collate_sources
from transformer_mt.runtime import autocast

WORD_START = "\u2581"  # sentencepiece's "▁": the piece follows a space


@dataclass
class Alignment:
    """The hard alignment of one translation."""

    pieces: list[tuple[int, int]]  # (source piece, target piece), one per target piece, in target order
    words: list[tuple[int, int]]  # (source word, target word), distinct, by target word then source word

    def format(self) -> tuple[str, str]:
        """The piece pairs and the word pairs as `S-T S-T ...` strings."""
        return format_pairs(self.pieces), format_pairs(self.words)


def format_pairs(pairs: Sequence[tuple[int, int]]) -> str:
    return " ".join(f"{s}-{t}" for s, t in pairs)


def word_indices(pieces: Sequence[str]) -> list[int]:
    """The word each piece belongs to: a word-initial piece ("▁...") starts the next word."""
    words, current = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or current < 0:
            current += 1
        words.append(current)
    return words


def cross_attention(translator: Translator, translations: Sequence[Translation]) -> list[torch.Tensor]:
    """For translations of one source sentence, each one's (tgt_len + 1, src_len + 1) attention of the
    last decoder layer averaged over heads and models (rows: the target pieces and EOS; columns: the
    source pieces and EOS), in fp32 on the CPU."""
    if not translations:
        return []
    source = translations[0].source
    if any(t.source != source for t in translations):
        raise ValueError("cross_attention takes translations of one source sentence")
    vocab, device = translator.vocab, translator.device
    src = collate_sources([source], pad_id=vocab.pad_id, eos_id=vocab.eos_id).to(device)
    src = src.expand(len(translations), -1)  # (n, src_len + 1)
    width = max(len(t.tokens) for t in translations) + 1
    prev = torch.full((len(translations), width), vocab.pad_id, dtype=torch.long)  # (n, tgt_len + 1)
    for row, t in enumerate(translations):  # BOS + the tokens, right-padded: what the decoder read
        prev[row, : len(t.tokens) + 1] = torch.tensor([vocab.bos_id, *t.tokens], dtype=torch.long)
    prev = prev.to(device)
    total = None
    with torch.inference_mode(), autocast(device, translator.precision):
        for model in translator.models:
            was_training = model.training
            model.eval()
            try:
                last = model.attention(src, prev).cross[-1].float().mean(dim=1)  # (n, tgt_len + 1, src_len + 1)
            finally:
                model.train(was_training)
            total = last if total is None else total + last
    mean = (total / len(translator.models)).cpu()
    return [mean[i, : len(t.tokens) + 1] for i, t in enumerate(translations)]


def align(translator: Translator, translations: Sequence[Translation]) -> list[Alignment]:
    """The hard alignment of each translation of one source sentence (see the module docstring)."""
    alignments = []
    usable = [t for t in translations if t.tokens and t.source]
    weights = iter(cross_attention(translator, usable))
    src_words = word_indices(translator.vocab.id_pieces(translations[0].source)) if translations else []
    for translation in translations:
        if not (translation.tokens and translation.source):
            alignments.append(Alignment([], []))
            continue
        rows = next(weights)[: len(translation.tokens), : len(translation.source)]  # no EOS on either side
        best = rows.argmax(dim=1).tolist()  # the source piece of each target piece
        pieces = [(s, t) for t, s in enumerate(best)]
        tgt_words = word_indices(translator.vocab.id_pieces(translation.tokens))
        words = sorted({(src_words[s], tgt_words[t]) for s, t in pieces}, key=lambda pair: (pair[1], pair[0]))
        alignments.append(Alignment(pieces, words))
    return alignments


__all__ = ["Alignment", "align", "cross_attention", "format_pairs", "word_indices"]
