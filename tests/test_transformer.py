"""The Transformer: incremental = full decoding, padding invariance, the window, sizes and FLOPs."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import transformer_mt
from tests.helpers import decode_step_by_step
from transformer_mt.models import DecoderState, build_model, count_parameters
from transformer_mt.models.transformer import Transformer, TransformerConfig

PAD, BOS, VOCAB = 0, 2, 23
PRESETS = Path(transformer_mt.__file__).parent / "configs" / "model"


def tiny(**overrides) -> Transformer:
    fields = dict(d_model=16, ffn_dim=32, heads=2, encoder_layers=2, decoder_layers=2, max_positions=64)
    return Transformer(TransformerConfig(**{**fields, **overrides}), vocab_size=VOCAB, pad_id=PAD)


def tokens(lengths, width, generator):
    """(batch, width) random word ids, right-padded to `width` after each length."""
    ids = torch.randint(4, VOCAB, (len(lengths), width), generator=generator)
    return ids.masked_fill(torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None], PAD)


def expected_parameters(d, f, encoder_layers, decoder_layers, vocab, *, shared=True, pre_norm=False):
    """The parameter count by formula: weights and biases of every projection, LayerNorm gains and biases."""
    attention = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O with biases
    ffn = d * f + f + f * d + d
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    embeddings = vocab * d * (1 if shared else 2)  # the output projection is tied: no extra matrix
    final_norms = 2 * norm if pre_norm else 0
    return encoder_layers * encoder_layer + decoder_layers * decoder_layer + embeddings + final_norms


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_cached_decoding_matches_full(norm, window, positions):
    """Step-by-step decoding with a DecoderState, reordered halfway as beam search does, gives the
    logits of teacher-forced decoding of the reordered batch."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = tiny(norm=norm, attention_window=window, positions=positions).eval()
    src = tokens([9, 6, 3, 8], 9, g)
    prev = tokens([8, 8, 5, 7], 8, g)
    prev[:, 0] = BOS
    order, reorder_at = torch.tensor([2, 0, 3, 1]), 3

    stepwise, prev, counts = decode_step_by_step(model, src, prev, order, reorder_at)
    assert stepwise.shape == (4, prev.size(1), VOCAB) and counts == list(range(1, prev.size(1) + 1))

    full = model(src[order], prev)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_decoding_as_beam_search_runs_it_matches_full(norm):
    """What the search does to a state: the first step with one row per sentence, then 3 rows per
    sentence sharing one copy of its cross-attention keys (rows_per_source=3), beams swapped within
    each sentence, a sentence dropped, and the self-attention buffers grown past their capacity and
    reordered into their spare buffers (inference mode): every step's logits equal full decoding's."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    model = tiny(norm=norm).eval()
    src = tokens([7, 4], 7, g)
    prev = tokens([9] * 6, 9, g)  # one prefix per hypothesis; all start with BOS
    prev[:, 0] = BOS
    expand = torch.tensor([0, 0, 0, 1, 1, 1])
    swap = torch.tensor([2, 0, 1, 3, 5, 4])  # beams change places within each sentence
    drop = torch.tensor([3, 4, 5])  # sentence 0 is done
    with torch.inference_mode():
        memory, state = model.encode(src), DecoderState(capacity=3)
        ids, sentences = torch.tensor([0, 3]), torch.arange(2)  # each row's prefix and sentence
        for t in range(prev.size(1)):
            if t == 1:
                memory, ids, sentences = memory.reorder(expand), torch.arange(6), sentences[expand]
                state.reorder(expand, same_sources=True, rows_per_source=3)
            elif t == 3:
                ids = ids[swap]
                state.reorder(swap, same_sources=True)
            elif t == 5:
                memory, ids, sentences = memory.reorder(drop), ids[drop], sentences[drop]
                state.reorder(drop)
            logits, state = model.decode(prev[ids, t : t + 1], memory, state)
            full = model(src[sentences], prev[ids, : t + 1])[:, -1:]
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
    assert state.rows_per_source == 3 and state.source_cache["dec0.cross.k"].size(0) == 1


def test_cache_names_are_unique_per_layer():
    model = tiny(decoder_layers=3).eval()
    src = torch.full((2, 4), 5)
    state = DecoderState()
    model.decode(torch.full((2, 1), BOS), model.encode(src), state)
    assert sorted(state.sequences) == sorted(f"dec{i}.self.{kv}" for i in range(3) for kv in ("k", "v"))
    assert sorted(state.source_cache) == sorted(f"dec{i}.cross.{kv}" for i in range(3) for kv in ("k", "v"))


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_source_padding_does_not_change_outputs(window, norm):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    model = tiny(attention_window=window, norm=norm).eval()
    src = tokens([7, 4, 2], 7, g)
    prev = tokens([5, 5, 5], 5, g)
    more_padding = torch.cat([src, torch.full((3, 6), PAD)], dim=1)

    memory, padded_memory = model.encode(src), model.encode(more_padding)
    real = ~memory.padding_mask
    assert torch.isfinite(padded_memory.states).all()
    torch.testing.assert_close(padded_memory.states[:, :7][real], memory.states[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(more_padding, prev), model(src, prev), atol=1e-5, rtol=1e-5)


def test_window_limits_what_each_position_depends_on():
    """With L layers of window r, encoder state i depends on source positions |i - j| <= L r, and
    decoder output i on target positions i - L r <= j <= i (gradient probe on the embedded inputs)."""
    torch.manual_seed(0)
    layers, window, n = 2, 2, 13
    model = tiny(encoder_layers=layers, decoder_layers=layers, attention_window=window).double().eval()
    embedded = []
    model.dropout.register_forward_hook(lambda module, inputs, output: embedded.append(output))
    src, prev = torch.randint(4, VOCAB, (1, n)), torch.randint(4, VOCAB, (1, n))
    j = torch.arange(n)
    probe = torch.randn(16, dtype=torch.double)  # not .sum(): a LayerNorm output sums to a constant

    memory = model.encode(src)
    (source,) = embedded  # (1, n, d_model), what the encoder layers read
    for i in range(n):
        (grad,) = torch.autograd.grad(memory.states[0, i] @ probe, source, retain_graph=True)
        assert (grad[0].abs().sum(-1) > 0).tolist() == ((j - i).abs() <= layers * window).tolist()

    logits, _ = model.decode(prev, memory, None)
    target = embedded[-1]  # what the decoder layers read
    for i in range(n):
        (grad,) = torch.autograd.grad(logits[0, i, :16] @ probe, target, retain_graph=True)
        assert (grad[0].abs().sum(-1) > 0).tolist() == ((j <= i) & (j >= i - layers * window)).tolist()


def test_shared_embeddings_are_one_tensor():
    model = tiny()
    weight = model.decoder_embed.weight
    assert model.encoder_embed.weight is weight
    state = model.state_dict()
    assert state["encoder_embed.weight"].data_ptr() == state["decoder_embed.weight"].data_ptr()
    assert count_parameters(model) == expected_parameters(16, 32, 2, 2, VOCAB)  # one V x d matrix
    # The output projection is that matrix too: a gradient through the logits alone reaches it.
    logits = model(torch.full((1, 3), 5), torch.full((1, 2), BOS))
    logits[0, -1, 7].backward()
    assert weight.grad[7].abs().sum() > 0 and weight.grad[PAD].abs().sum() == 0


def test_separate_embeddings_tie_only_decoder_input_and_output():
    model = tiny(share_embeddings=False)
    assert model.encoder_embed.weight is not model.decoder_embed.weight
    assert count_parameters(model) == expected_parameters(16, 32, 2, 2, VOCAB, shared=False)
    assert (
        model.encoder_embed.weight[PAD].abs().sum() == 0 and model.decoder_embed.weight[PAD].abs().sum() == 0
    )


def test_every_parameter_gets_a_gradient():
    model = tiny(norm="pre", positions="learned")
    g = torch.Generator().manual_seed(3)
    logits = model(tokens([5, 3], 5, g), tokens([4, 4], 4, g))
    torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), tokens([4, 2], 4, g).flatten(), ignore_index=PAD
    ).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize(
    ("preset", "vocab", "paper_millions"),
    [("transformer_base", 37000, 65), ("transformer_big", 37000, 213), ("transformer_tiny", 1000, None)],
)
def test_shipped_presets_build_with_the_papers_sizes(preset, vocab, paper_millions):
    """Every preset builds; base and big have the formula's count, within 5% of the paper's Table 3."""
    node = OmegaConf.load(PRESETS / f"{preset}.yaml")
    assert list(node.pop("defaults")) == ["transformer_schema", "_self_"]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TransformerConfig), node))
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        model = build_model(cfg, vocab_size=vocab, pad_id=PAD)
    count = count_parameters(model)
    print(f"{preset} at vocab {vocab}: {count:,} parameters")
    assert count == expected_parameters(
        cfg.d_model, cfg.ffn_dim, cfg.encoder_layers, cfg.decoder_layers, vocab
    )
    if paper_millions is not None:
        assert abs(count / 1e6 - paper_millions) <= 0.05 * paper_millions


def test_forward_flops_hand_count():
    """d 4, d_ff 8, one layer each, vocabulary 10, batch 2, src_len 3, tgt_len 5."""
    model = Transformer(
        TransformerConfig(d_model=4, ffn_dim=8, heads=2, encoder_layers=1, decoder_layers=1),
        vocab_size=10,
        pad_id=0,
    )
    encoder = 8 * 2 * 3 * 4 * 4 + 4 * 2 * 3 * 3 * 4 + 4 * 2 * 3 * 4 * 8  # projections, QK^T and AV, FFN
    assert encoder == 768 + 288 + 768
    decoder_self = 8 * 2 * 5 * 4 * 4 + 4 * 2 * 5 * 5 * 4  # 1280 + 800
    decoder_cross = 4 * 2 * 5 * 4 * 4 + 4 * 2 * 3 * 4 * 4 + 4 * 2 * 5 * 3 * 4  # 640 + 384 + 480
    decoder_ffn = 4 * 2 * 5 * 4 * 8  # 1280
    output = 2 * 2 * 5 * 4 * 10  # 800
    assert (
        model.forward_flops(2, 3, 5) == encoder + decoder_self + decoder_cross + decoder_ffn + output == 7488
    )

    # Window 1: the decoder's queries see 2 keys instead of 5; the encoder's band (3) is the whole source.
    windowed = Transformer(
        TransformerConfig(
            d_model=4, ffn_dim=8, heads=2, encoder_layers=1, decoder_layers=1, attention_window=1
        ),
        vocab_size=10,
        pad_id=0,
    )
    assert windowed.forward_flops(2, 3, 5) == 7488 - 4 * 2 * 5 * (5 - 2) * 4


def test_forward_flops_match_pytorch_flop_counter():
    model = tiny().eval()
    src, prev = torch.full((3, 7), 5), torch.full((3, 6), 5)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(src, prev)
    assert model.forward_flops(3, 7, 6) == counter.get_total_flops()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(d_model=10, heads=4), "divisible by heads"),
        (dict(norm="sandwich"), "norm="),
        (dict(positions="rotary"), "positions="),
        (dict(attention_window=0), "attention_window"),
        (dict(dropout=1.0), "dropout"),
        (dict(d_model=9, heads=3), "even"),
        (dict(arch="lstm"), "arch"),
    ],
)
def test_config_rejects_bad_fields_with_a_clear_message(fields, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**fields)


def test_too_long_sequences_raise_a_clear_error():
    model = tiny(max_positions=8)
    assert model.max_positions == 8
    with pytest.raises(ValueError, match="max_positions=8"):
        model.encode(torch.full((1, 9), 5))
    with pytest.raises(ValueError, match="one new position"):
        model.decode(torch.full((1, 2), BOS), model.encode(torch.full((1, 3), 5)), DecoderState())
