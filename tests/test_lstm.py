"""The LSTM baseline (models/lstm.py): incremental = full decoding, with and without input feeding,
beam search over both, padding, FLOPs, presets, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from torch.utils.flop_counter import FlopCounterMode

import transformer_mt
from transformer_mt.bench.layer_probes import reference_kernels
from transformer_mt.decoding.search import DecodingConfig, generate
from transformer_mt.models import build_model
from transformer_mt.models.interface import DecoderState, EncoderDecoder, count_parameters
from transformer_mt.models.lstm import LSTMConfig, LSTMSeq2Seq

PAD, BOS, EOS = 0, 2, 3
VOCAB = 24
CONFIG_DIR = Path(transformer_mt.__file__).parent / "configs"


def tiny(**overrides) -> LSTMConfig:
    fields = dict(embed_dim=12, hidden_size=16, encoder_layers=3, decoder_layers=2, dropout=0.1)
    return LSTMConfig(**{**fields, **overrides})


def make_model(cfg: LSTMConfig, seed: int = 0) -> LSTMSeq2Seq:
    torch.manual_seed(seed)
    return LSTMSeq2Seq(cfg, vocab_size=VOCAB, pad_id=PAD).eval()


def random_tokens(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=generator)


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention": "luong"},
        {"attention": "bahdanau"},
        {"attention": "luong", "input_feeding": False},
        {"attention": "bahdanau", "input_feeding": False},
        # untied embeddings, no bidirectional layer, a decoder deeper than the encoder (zeros at the top)
        {"share_embeddings": False, "bidirectional_first": False, "decoder_layers": 4},
        {"share_embeddings": False, "bidirectional_first": False, "decoder_layers": 4, "input_feeding": False},
    ],
)
def test_cached_decoding_matches_full_through_a_reorder(overrides: dict) -> None:
    model = make_model(tiny(**overrides))
    with torch.no_grad():  # weights 5x the init's, so that every path (input feeding too) moves the logits
        for p in model.parameters():
            p.mul_(5.0)
    g = torch.Generator().manual_seed(1)
    src = random_tokens(3, 7, g)
    src[1, 4:] = PAD
    prev = random_tokens(3, 6, g)
    prev[2, 5:] = PAD  # a shorter target too, as in a training batch
    with torch.no_grad():
        memory = model.encode(src)
        full, none = model.decode(prev, memory, None)  # (3, 6, vocab)
        assert none is None and full.shape == (3, 6, VOCAB)

        # Beam search keeps some rows, drops others and duplicates some: rows 2, 0, 0 after step 3.
        order = torch.tensor([2, 0, 0])
        state = DecoderState()
        for t in range(6):
            if t == 3:
                state.reorder(order)
                memory = memory.reorder(order)
            rows = order if t >= 3 else torch.arange(3)
            logits, returned = model.decode(prev[rows, t : t + 1], memory, state)
            assert returned is state and state.steps == t + 1
            torch.testing.assert_close(logits[:, 0], full[rows, t], atol=1e-5, rtol=0)


def test_without_input_feeding_training_runs_the_decoder_lstm_once() -> None:
    """The fast path: one fused LSTM call over the whole target sequence, not one per position."""
    calls = {}
    for input_feeding in (True, False):
        model = make_model(tiny(input_feeding=input_feeding))
        count = [0]
        model.decoder.lstm.register_forward_hook(lambda *_, count=count: count.__setitem__(0, count[0] + 1))
        g = torch.Generator().manual_seed(5)
        model(random_tokens(2, 5, g), random_tokens(2, 7, g))
        calls[input_feeding] = count[0]
    assert calls == {True: 7, False: 1}


class RecomputeFull(EncoderDecoder):
    """Wraps a model: every incremental step re-runs teacher-forced decoding of the whole prefix."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model, self.pad_id = model, model.pad_id

    def encode(self, src_tokens):
        return self.model.encode(src_tokens)

    def decode(self, prev_tokens, memory, state):
        seen = state.cache.get("prev")
        seen = prev_tokens if seen is None else torch.cat([seen, prev_tokens], dim=1)
        state.cache["prev"] = seen
        logits, _ = self.model.decode(seen, memory, None)
        return logits[:, -1:], state


@pytest.mark.parametrize("input_feeding", [True, False])
def test_beam_search_with_the_cache_equals_search_by_full_recompute(input_feeding: bool) -> None:
    """Beam search over the LSTM's DecoderState (reordered at every step) finds what a search that
    re-decodes each prefix in full finds, in a batch of padded sources and one sentence at a time.
    The model has learnt eight pairs, so its hypotheses end at different lengths."""
    model, _ = train_on_eight_pairs(learner(input_feeding=input_feeding))
    src, target = eight_pairs()
    cfg = DecodingConfig(beam=4, nbest=4, lenpen=0.6, max_len_a=0.0, max_len_b=8)
    ids = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}
    cached = generate([model], src, cfg, **ids)
    recomputed = generate([RecomputeFull(model)], src, cfg, **ids)
    learnt = 0
    for i, (fast, slow) in enumerate(zip(cached, recomputed, strict=True)):
        assert len(fast) == 4 and [h.tokens for h in fast] == [h.tokens for h in slow]
        assert [h.score for h in fast] == pytest.approx([h.score for h in slow], abs=1e-4)
        length = int(src[i].ne(PAD).sum())
        alone = generate([model], src[i : i + 1, :length], cfg, **ids)[0]
        assert [h.tokens for h in fast] == [h.tokens for h in alone]
        learnt += fast[0].tokens == target[i][target[i] > EOS].tolist()
    assert learnt >= 5, f"the best hypothesis is the learnt target for only {learnt} of 8 sources"


@pytest.mark.parametrize("bidirectional_first", [True, False])
def test_source_padding_does_not_change_outputs(bidirectional_first: bool) -> None:
    model = make_model(tiny(bidirectional_first=bidirectional_first))
    g = torch.Generator().manual_seed(2)
    short, long = random_tokens(1, 4, g), random_tokens(1, 9, g)
    batch = torch.cat([F.pad(short, (0, 5), value=PAD), long])  # (2, 9), the first row padded
    prev = random_tokens(1, 5, g)
    with torch.no_grad():
        alone = model.encode(short)
        padded = model.encode(batch).reorder(torch.tensor([0]))
        torch.testing.assert_close(padded.states[:, :4], alone.states, atol=1e-6, rtol=0)
        torch.testing.assert_close(padded.extras["final_h"], alone.extras["final_h"], atol=1e-6, rtol=0)
        torch.testing.assert_close(padded.extras["final_c"], alone.extras["final_c"], atol=1e-6, rtol=0)
        torch.testing.assert_close(
            model.forward(batch[:1], prev), model.forward(short, prev), atol=1e-6, rtol=0
        )


def test_luong_and_bahdanau_are_different_scores_of_one_decoder() -> None:
    luong, bahdanau = make_model(tiny(attention="luong")), make_model(tiny(attention="bahdanau"))
    extra = count_parameters(bahdanau) - count_parameters(luong)
    assert extra == 16 * 16 + 16 + 16  # W_2 and its bias, and v
    g = torch.Generator().manual_seed(3)
    src, prev = random_tokens(2, 5, g), random_tokens(2, 4, g)
    with torch.no_grad():
        assert not torch.allclose(luong(src, prev), bahdanau(src, prev))


def test_forward_flops_matches_a_hand_count() -> None:
    # E=4, H=6, V=24: a bidirectional first layer and one more encoder layer, two decoder layers,
    # input feeding, tied embeddings with a 6 -> 4 output projection.
    cfg = LSTMConfig(embed_dim=4, hidden_size=6, encoder_layers=2, decoder_layers=2)
    model = LSTMSeq2Seq(cfg, vocab_size=VOCAB, pad_id=PAD)
    B, S, T = 2, 3, 5
    encoder = S * (2 * 8 * 6 * (4 + 6) + 2 * 12 * 6) + S * 8 * 6 * (6 + 6)  # 2880 + 864 + 1728
    keys = S * 2 * 6 * 6
    decoder_lstm = T * (8 * 6 * (4 + 6 + 6) + 8 * 6 * (6 + 6))
    attention = T * (2 * S * 6 + 2 * S * 6 + 2 * 12 * 6)  # scores, context, W_c
    output = T * (2 * 6 * 4 + 2 * 4 * VOCAB)
    assert model.forward_flops(B, S, T) == B * (encoder + keys + decoder_lstm + attention + output)

    additive = LSTMSeq2Seq(
        LSTMConfig(**{**cfg.__dict__, "attention": "bahdanau"}), vocab_size=VOCAB, pad_id=PAD
    )
    assert additive.forward_flops(B, S, T) - model.forward_flops(B, S, T) == B * T * 2 * 6 * 6  # W_2 h_t

    # Without input feeding the first decoder layer reads E, not E + H: 8 H H fewer per position.
    no_feeding = LSTMSeq2Seq(
        LSTMConfig(**{**cfg.__dict__, "input_feeding": False}), vocab_size=VOCAB, pad_id=PAD
    )
    assert model.forward_flops(B, S, T) - no_feeding.forward_flops(B, S, T) == B * T * 8 * 6 * 6


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"input_feeding": False},
        {"attention": "bahdanau"},
        {"attention": "bahdanau", "input_feeding": False},
        {"share_embeddings": False, "bidirectional_first": False, "decoder_layers": 4},
        {"embed_dim": 16, "input_feeding": False},  # embed_dim == hidden_size: no output projection
    ],
)
def test_forward_flops_match_pytorch_flop_counter(overrides: dict) -> None:
    model = make_model(tiny(**overrides))
    src, prev = torch.full((3, 7), 5), torch.full((3, 6), 5)
    # The reference kernels, so that the LSTMs run as matrix products the counter sees (oneDNN's
    # fused LSTM is one opaque call that it counts as 0).
    with reference_kernels(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(src, prev)
    assert model.forward_flops(3, 7, 6) == counter.get_total_flops()


def analytic_parameter_count(cfg: LSTMConfig, vocab_size: int) -> int:
    E, H, V = cfg.embed_dim, cfg.hidden_size, vocab_size

    def lstm(inputs: int) -> int:  # one layer and direction: input and recurrent weights, two biases
        return 4 * H * (inputs + H) + 8 * H

    assert cfg.bidirectional_first and cfg.share_embeddings and cfg.attention == "luong"
    embeddings = V * E  # source, target and output share one matrix
    encoder = 2 * lstm(E) + (2 * H * H + H) + (cfg.encoder_layers - 1) * lstm(H)
    decoder = lstm(E + H if cfg.input_feeding else E) + (cfg.decoder_layers - 1) * lstm(H)
    attention = H * H + 2 * H * H  # W_a, W_c
    output = (H * E if H != E else 0) + V  # projection to the embedding size, output bias
    return embeddings + encoder + decoder + attention + output


def compose_preset(name: str):
    ConfigStore.instance().store(group="model", name="lstm_schema", node=LSTMConfig)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(overrides=[f"+model={name}"]).model


@pytest.mark.parametrize("preset", ["lstm_attention", "lstm_small", "lstm_tiny"])
def test_presets_build_with_the_expected_parameter_count(preset: str) -> None:
    node = compose_preset(preset)
    counts = {}
    for vocab_size in (37000, 1000):
        with torch.device("meta"):
            counts[vocab_size] = count_parameters(build_model(node, vocab_size=vocab_size, pad_id=PAD))
    print(f"{preset}: {counts[37000]:,} parameters at vocab 37000, {counts[1000]:,} at vocab 1000")
    model = build_model(node, vocab_size=1000, pad_id=PAD).eval()  # really, on the CPU
    assert isinstance(model, LSTMSeq2Seq)
    for vocab_size, count in counts.items():
        assert count == analytic_parameter_count(model.cfg, vocab_size)
    assert count_parameters(model) == counts[1000]
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 3]]), torch.tensor([[2, 7]]))
    assert logits.shape == (1, 2, 1000) and torch.isfinite(logits).all()
    if preset == "lstm_attention":
        assert (model.cfg.encoder_layers, model.cfg.hidden_size, model.cfg.embed_dim) == (4, 1000, 1000)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention": "dot"}, "model.attention"),
        ({"hidden_size": 0}, "model.hidden_size"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"max_positions": 0}, "model.max_positions"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_sequences_longer_than_max_positions_are_refused() -> None:
    model = make_model(tiny(max_positions=5))
    assert model.max_positions == 5
    with pytest.raises(ValueError, match="max_positions=5"):
        model.encode(torch.full((1, 6), 4))


def eight_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Random sources (some padded) and targets of 1 to 6 words, each ended by EOS, padded."""
    g = torch.Generator().manual_seed(4)
    src, words = random_tokens(8, 7, g), random_tokens(8, 6, g)
    src[::2, 5:] = PAD
    lengths = torch.tensor([6, 3, 5, 1, 4, 6, 2, 5])
    target = torch.cat([words, torch.full((8, 1), PAD)], dim=1)  # (8, 7)
    target[torch.arange(8), lengths] = EOS
    target[torch.arange(7)[None, :] > lengths[:, None]] = PAD
    return src, target


def train_on_eight_pairs(cfg: LSTMConfig, steps: int = 100) -> tuple[LSTMSeq2Seq, list[float]]:
    torch.manual_seed(0)
    model = LSTMSeq2Seq(cfg, vocab_size=VOCAB, pad_id=PAD)
    src, target = eight_pairs()
    prev = torch.cat([torch.full((8, 1), BOS), target[:, :-1]], dim=1)  # BOS + target, shifted
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(src, prev).transpose(1, 2), target, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def learner(**overrides) -> LSTMConfig:
    return tiny(**{"dropout": 0.0, "hidden_size": 64, "embed_dim": 32, "encoder_layers": 2, **overrides})


@pytest.mark.parametrize("input_feeding", [True, False])
@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_tiny_model_overfits_eight_pairs(attention: str, input_feeding: bool) -> None:
    _, losses = train_on_eight_pairs(learner(attention=attention, input_feeding=input_feeding))
    assert losses[-1] < 0.1 * losses[0], losses[::10]


@pytest.mark.parametrize("input_feeding", [True, False])
def test_scaled_embeddings_carry_the_signal_through_the_stacked_lstms_at_init(input_feeding: bool) -> None:
    """At lstm_small's size with init=xavier, the N(0, 1/embed_dim) embeddings (sized for the tied
    output layer) are too small an input for Glorot-initialised LSTMs: unscaled, the attentional
    states start near 0.007, a tenth of what sqrt(embed_dim)-scaled embeddings give, and training
    starts near unigram loss (Multi30k: valid ppl 74 against 23 after 600 steps, one seed each)."""
    g = torch.Generator().manual_seed(0)
    src, prev = torch.randint(4, 6000, (16, 12), generator=g), torch.randint(4, 6000, (16, 10), generator=g)
    spread = {}
    for scale in (False, True):
        torch.manual_seed(0)
        cfg = LSTMConfig(
            embed_dim=256, hidden_size=384, encoder_layers=2, decoder_layers=2, init="xavier",
            input_feeding=input_feeding, scale_embeddings=scale,
        )  # fmt: skip
        model = LSTMSeq2Seq(cfg, vocab_size=6000, pad_id=PAD).eval()
        with torch.no_grad():
            embedded = model.decoder.embed(prev) * model.decoder.embed_scale
            spread[scale] = model.decoder.teacher_forced(embedded, model.encode(src)).std().item()
    assert spread[False] < 0.02 and spread[True] > 0.05, spread


def test_xavier_init_sets_forget_gate_bias_and_scales_embeddings():
    cfg = LSTMConfig(embed_dim=16, hidden_size=8, encoder_layers=1, decoder_layers=1, init="xavier")
    model = LSTMSeq2Seq(cfg, vocab_size=30, pad_id=0)
    bias = model.decoder.lstm.bias_ih_l0  # gates i, f, g, o
    assert torch.all(bias[8:16] == 1.0) and torch.all(bias[:8] == 0.0) and torch.all(bias[16:] == 0.0)
    embed = model.encoder.embed.weight[1:]
    assert 0.5 * 16**-0.5 < embed.std().item() < 1.5 * 16**-0.5
    with pytest.raises(ValueError, match="model.init"):
        LSTMConfig(init="orthogonal")
