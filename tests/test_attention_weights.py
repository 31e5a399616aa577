"""`EncoderDecoder.attention`: every family's teacher-forced pass with its attention weights
(models/interface.py; transformer.py and attention.py, lstm.py, convs2s.py).

The weights must be what the model really used: distributions over the unpadded keys, and the
logits of that pass those of `forward` (which the Transformer computes with fused kernels that
never return the weights)."""

from __future__ import annotations

import pytest
import torch

from transformer_mt.models import build_model

PAD, BOS, VOCAB = 0, 2, 29
SRC_LENGTHS, TGT_LENGTHS = [7, 3, 5], [6, 6, 2]

FAMILIES = {
    "transformer": dict(arch="transformer", d_model=16, ffn_dim=32, heads=4, encoder_layers=2, decoder_layers=3),
    "transformer_pre_window": dict(
        arch="transformer", d_model=16, ffn_dim=32, heads=2, encoder_layers=2, decoder_layers=2,
        norm="pre", attention_window=2, positions="learned", max_positions=32,
    ),
    "lstm": dict(arch="lstm", embed_dim=12, hidden_size=16, encoder_layers=2, decoder_layers=2, dropout=0.0),
    "lstm_bahdanau_no_feeding": dict(
        arch="lstm", embed_dim=16, hidden_size=16, encoder_layers=1, decoder_layers=1, attention="bahdanau",
        input_feeding=False, dropout=0.0,
    ),
    "convs2s": dict(
        arch="convs2s", embed_dim=16, out_embed_dim=8, encoder_layers=[[16, 3], [24, 3]],
        decoder_layers=[[16, 3], [16, 2], [24, 3]], dropout=0.0,
    ),
}
# (encoder self-attention layers, cross-attention layers, heads) each family must report
EXPECTED = {
    "transformer": (2, 3, 4),
    "transformer_pre_window": (2, 2, 2),
    "lstm": (0, 1, 1),
    "lstm_bahdanau_no_feeding": (0, 1, 1),
    "convs2s": (0, 3, 1),
}


def padded(lengths: list[int], generator: torch.Generator, first: int | None = None) -> torch.Tensor:
    width = max(lengths)
    ids = torch.randint(4, VOCAB, (len(lengths), width), generator=generator)
    if first is not None:
        ids[:, 0] = first
    return ids.masked_fill(torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None], PAD)


def model_and_inputs(name: str):
    torch.manual_seed(0)
    model = build_model(FAMILIES[name], vocab_size=VOCAB, pad_id=PAD).eval()
    g = torch.Generator().manual_seed(3)
    return model, padded(SRC_LENGTHS, g), padded(TGT_LENGTHS, g, first=BOS)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_of_the_attention_pass_equal_forward(name):
    model, src, prev = model_and_inputs(name)
    with torch.no_grad():
        found = model.attention(src, prev)
        expected = model(src, prev)
    assert found.logits.shape == expected.shape
    torch.testing.assert_close(found.logits, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_weights_are_distributions_over_unpadded_positions(name):
    model, src, prev = model_and_inputs(name)
    with torch.no_grad():
        found = model.attention(src, prev)
    encoder_layers, cross_layers, heads = EXPECTED[name]
    assert len(found.encoder) == encoder_layers and len(found.cross) == cross_layers
    src_pad = src.eq(PAD)  # (batch, src_len)
    real_rows = ~prev.eq(PAD)  # (batch, tgt_len) target positions that are not padding

    for weights in found.cross:
        assert weights.shape == (src.size(0), heads, prev.size(1), src.size(1))
        assert (weights >= 0).all()
        assert weights.masked_select(src_pad[:, None, None, :]).abs().max() == 0  # nothing on padding
        sums = weights.sum(-1)  # (batch, heads, tgt_len)
        torch.testing.assert_close(sums, torch.ones_like(sums))
        assert weights.amax(-1).min() < 1.0  # not one-hot: real weights, not a placeholder

    for weights in found.encoder:
        assert weights.shape == (src.size(0), heads, src.size(1), src.size(1))
        rows = (~src_pad)[:, None, :, None].expand_as(weights)  # the rows of real source positions
        on_padding = weights.masked_fill(~rows, 0).masked_select(src_pad[:, None, None, :])
        assert on_padding.abs().max() == 0
        sums = weights.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))

    for weights in found.decoder:  # causal: row t sees positions 0..t
        assert weights.shape == (src.size(0), heads, prev.size(1), prev.size(1))
        above = torch.ones(prev.size(1), prev.size(1), dtype=torch.bool).triu(1)
        assert weights[..., above].abs().max() == 0
        kept = weights.masked_select(real_rows[:, None, :, None]).view(-1)
        assert kept.numel() and (kept >= 0).all()


def test_restricted_attention_weights_stay_inside_the_window():
    model, src, prev = model_and_inputs("transformer_pre_window")
    window = FAMILIES["transformer_pre_window"]["attention_window"]
    with torch.no_grad():
        found = model.attention(src, prev)
    n = src.size(1)
    offset = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    outside = offset.abs() > window
    for weights in found.encoder:
        rows = ~src.eq(PAD)  # real query positions
        assert weights.masked_select(outside & rows[:, None, :, None]).abs().max() == 0
    t = prev.size(1)
    offset = torch.arange(t)[None, :] - torch.arange(t)[:, None]
    for weights in found.decoder:
        assert weights[..., (offset > 0) | (offset < -window)].abs().max() == 0


def test_a_sentence_gets_the_same_weights_alone_and_in_a_padded_batch():
    model, src, prev = model_and_inputs("transformer")
    with torch.no_grad():
        batched = model.attention(src, prev)
        alone = model.attention(src[1:2, : SRC_LENGTHS[1]], prev[1:2, : TGT_LENGTHS[1]])
    for together, single in zip(batched.cross, alone.cross, strict=True):
        torch.testing.assert_close(
            together[1:2, :, : TGT_LENGTHS[1], : SRC_LENGTHS[1]], single, atol=1e-5, rtol=1e-5
        )
