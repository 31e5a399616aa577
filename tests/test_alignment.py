"""Alignments from attention (transformer_mt/decoding/alignment.py) and `translate print_alignment=true`."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.helpers import SAMPLE_SENTENCES, run_cli, write_random_checkpoint
from transformer_mt.data.vocab import EOS_ID, PAD_ID
from transformer_mt.decoding.alignment import align, cross_attention, format_pairs, word_indices
from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.decoding.translator import Translator
from transformer_mt.models.interface import AttentionWeights, EncoderDecoder, EncoderOutput


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("align") / "checkpoint.pt")


@pytest.fixture(scope="module")
def translator(checkpoint):
    return Translator.from_checkpoint(checkpoint, device="cpu", nbest=2)


def test_word_indices_start_a_word_at_each_word_initial_piece():
    assert word_indices(["\u2581The", "\u2581o", "ld", "\u2581w", "om", "an", "."]) == [0, 1, 1, 2, 2, 2, 2]
    assert word_indices(["ab", "c", "\u2581d"]) == [0, 0, 1]  # no leading mark: still word 0
    assert word_indices(["\u2581", "(", "\u2581x"]) == [0, 0, 1]  # a lone mark begins the word it precedes
    assert format_pairs([(0, 0), (2, 1)]) == "0-0 2-1" and format_pairs([]) == ""


class Rotator(EncoderDecoder):
    """Outputs the source rotated by one (word 1, 2, ..., n - 1, then word 0): at target position t it
    puts all its attention on source position (t + 1) mod n and copies that token; at the final
    EOS, on the source's EOS. (A rotation, unlike a reversal, is not its own inverse: reading the
    weights by column instead of by row would give other pairs.)"""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size, self.pad_id = vocab_size, PAD_ID
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        return EncoderOutput(torch.zeros(*src_tokens.shape, 1), src_tokens.eq(PAD_ID), {"src": src_tokens})

    def _weights(self, src: Tensor, tgt_len: int) -> Tensor:
        n = src.ne(PAD_ID).sum(1) - 1  # words, without EOS
        t = torch.arange(tgt_len)[None, :].expand(src.size(0), -1)
        position = torch.where(t < n[:, None], (t + 1) % n[:, None], n[:, None])  # (batch, tgt_len)
        return nn.functional.one_hot(position, src.size(1)).float()  # (batch, tgt_len, src_len)

    def decode(self, prev_tokens, memory, state):
        start = 0 if state is None else state.steps
        src = memory.extras["src"]
        weights = self._weights(src, start + prev_tokens.size(1))[:, start:]
        target = torch.bmm(weights, src.unsqueeze(2).float()).squeeze(2).long()  # the attended token
        target = target.masked_fill(target.eq(PAD_ID), EOS_ID)
        logits = nn.functional.one_hot(target, self.vocab_size).float() * 8.0 * self.scale
        if state is not None:
            state.steps += prev_tokens.size(1)
        return logits, state

    def attention(self, src_tokens, prev_tokens):
        weights = self._weights(src_tokens, prev_tokens.size(1))
        return AttentionWeights(logits=self(src_tokens, prev_tokens), cross=[weights.unsqueeze(1)])


def test_each_target_piece_is_aligned_to_the_source_piece_it_attends_to(translator):
    line = "the small dog sleeps"
    rotator = Translator([Rotator(len(translator.vocab))], translator.vocab, DecodingConfig(beam=2, nbest=1))
    [hyp] = rotator.translate([line])[0]
    source = translator.vocab.encode(line)
    assert hyp.tokens == source[1:] + source[:1]  # it really copies what it attends to
    [alignment] = align(rotator, [hyp])
    n = len(source)
    assert alignment.pieces == [((t + 1) % n, t) for t in range(n)]  # never the source's EOS
    src_words = word_indices(translator.vocab.id_pieces(source))
    tgt_words = word_indices(translator.vocab.id_pieces(hyp.tokens))
    assert alignment.words == sorted({(src_words[s], tgt_words[t]) for s, t in alignment.pieces}, key=lambda p: (p[1], p[0]))


def test_alignment_is_the_argmax_of_the_last_layers_cross_attention_averaged_over_heads(translator):
    hyps = translator.translate([SAMPLE_SENTENCES[0]])[0]
    assert len(hyps) == 2
    alignments = align(translator, hyps)
    model, vocab = translator.models[0], translator.vocab
    for hyp, alignment in zip(hyps, alignments, strict=True):
        src = torch.tensor([hyp.source + [vocab.eos_id]])
        prev = torch.tensor([[vocab.bos_id] + hyp.tokens])
        with torch.no_grad():
            last = model.attention(src, prev).cross[-1][0].mean(0)  # (tgt_len + 1, src_len + 1)
        expected = last[: len(hyp.tokens), : len(hyp.source)].argmax(1).tolist()
        assert alignment.pieces == [(s, t) for t, s in enumerate(expected)]
    weights = cross_attention(translator, hyps)
    assert [w.shape for w in weights] == [(len(h.tokens) + 1, len(h.source) + 1) for h in hyps]
    assert align(translator, translator.translate([""])[0])[0].pieces == []


def test_translate_print_alignment_adds_piece_and_word_pairs(checkpoint, translator, tmp_path):
    lines = [SAMPLE_SENTENCES[0], "", SAMPLE_SENTENCES[3]]
    source = tmp_path / "input.en"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain = run_cli("translate", f"checkpoint={checkpoint}", f"input={source}", "device=cpu")
    aligned = run_cli("translate", f"checkpoint={checkpoint}", f"input={source}", "device=cpu", "print_alignment=true")
    assert plain.returncode == 0 and aligned.returncode == 0, aligned.stderr[-2000:]
    rows = [row.split("\t") for row in aligned.stdout.split("\n")[:-1]]
    assert [row[0] for row in rows] == plain.stdout.split("\n")[:-1]  # the translations are unchanged
    assert rows[1] == ["", "", ""]  # an empty line stays empty, with empty alignments
    expected = Translator.from_checkpoint(checkpoint, device="cpu").translate(lines)
    for line, row, hyps in zip(lines, rows, expected, strict=True):
        assert len(row) == 3
        if not hyps[0].tokens:
            continue
        pieces = [tuple(map(int, pair.split("-"))) for pair in row[1].split()]
        assert pieces == align(translator, hyps[:1])[0].pieces
        assert [t for _, t in pieces] == list(range(len(hyps[0].tokens)))  # a pair per target piece
        words = [tuple(map(int, pair.split("-"))) for pair in row[2].split()]
        assert words and max(s for s, _ in words) < len(line.split())
        assert max(t for _, t in words) < max(1, len(row[0].split()))


def test_print_alignment_with_nbest_adds_the_fields_to_each_hypothesis(checkpoint, tmp_path):
    result = run_cli(
        "translate", f"checkpoint={checkpoint}", "device=cpu", "print_alignment=true", "decoding.nbest=2",
        stdin=SAMPLE_SENTENCES[1] + "\n",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [row.split("\t") for row in result.stdout.splitlines()]
    assert [row[:2] for row in rows] == [["0", "1"], ["0", "2"]]
    assert all(len(row) == 6 and row[4] for row in rows)
