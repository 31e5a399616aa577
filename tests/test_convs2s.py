"""ConvS2S (models/convs2s.py): incremental = full decoding, padding, causality, scaling, FLOPs, presets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

import transformer_mt
from transformer_mt.models import build_model
from transformer_mt.models.convs2s import ConvS2S, ConvS2SConfig
from transformer_mt.models.interface import DecoderState, count_parameters

PAD = 0
VOCAB = 24
CONFIG_DIR = Path(transformer_mt.__file__).parent / "configs"


def tiny(**overrides) -> ConvS2SConfig:
    # Channel changes (a residual projection), kernel widths 3, 4 (even), 5 and 1 (no cached window).
    fields = dict(
        embed_dim=16,
        encoder_layers=[[24, 3], [24, 4], [32, 5], [32, 1]],
        decoder_layers=[[24, 3], [32, 5], [32, 1]],
        out_embed_dim=12,
        dropout=0.1,
        max_positions=32,
    )
    return ConvS2SConfig(**{**fields, **overrides})


def make_model(cfg: ConvS2SConfig, seed: int = 0) -> ConvS2S:
    torch.manual_seed(seed)
    return ConvS2S(cfg, vocab_size=VOCAB, pad_id=PAD).eval()


def random_tokens(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=generator)


@pytest.mark.parametrize("overrides", [{}, {"share_embeddings": True, "out_embed_dim": 16}])
def test_cached_decoding_matches_full_through_a_reorder(overrides: dict) -> None:
    model = make_model(tiny(**overrides))
    g = torch.Generator().manual_seed(1)
    src = random_tokens(3, 7, g)
    src[1, 4:] = PAD
    prev = random_tokens(3, 8, g)
    with torch.no_grad():
        memory = model.encode(src)
        full, none = model.decode(prev, memory, None)  # (3, 8, vocab)
        assert none is None and full.shape == (3, 8, VOCAB)

        # Beam search keeps some rows, drops others and duplicates some: rows 2, 0, 0 after step 4.
        order = torch.tensor([2, 0, 0])
        state = DecoderState()
        for t in range(8):
            if t == 4:
                state.reorder(order)
                memory = memory.reorder(order)
            rows = order if t >= 4 else torch.arange(3)
            logits, returned = model.decode(prev[rows, t : t + 1], memory, state)
            assert returned is state and state.steps == t + 1
            torch.testing.assert_close(logits[:, 0], full[rows, t], atol=1e-5, rtol=0)


def test_incremental_cache_does_not_grow_with_length() -> None:
    model = make_model(tiny())
    g = torch.Generator().manual_seed(2)
    src, prev = random_tokens(2, 5, g), random_tokens(2, 10, g)
    memory, state, sizes = model.encode(src), DecoderState(), []
    with torch.no_grad():
        for t in range(10):
            model.decode(prev[:, t : t + 1], memory, state)
            sizes.append(sum(tensor.numel() for tensor in state.cache.values()))
    assert len(set(sizes)) == 1
    # the last k - 1 inputs of each layer: 2 x 24 (k=3), 4 x 24 (k=5, input 24 channels), 0 (k=1)
    assert sizes[0] == 2 * (2 * 24 + 4 * 24)


def test_source_padding_does_not_change_outputs() -> None:
    model = make_model(tiny())
    g = torch.Generator().manual_seed(3)
    short, long = random_tokens(1, 4, g), random_tokens(1, 9, g)
    batch = torch.cat([F.pad(short, (0, 5), value=PAD), long])  # (2, 9), the first row padded
    prev = random_tokens(1, 5, g)
    with torch.no_grad():
        alone = model.encode(short)
        padded = model.encode(batch).reorder(torch.tensor([0]))
        torch.testing.assert_close(padded.states[:, :4], alone.states, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            padded.extras["z_plus_e"][:, :4], alone.extras["z_plus_e"], atol=1e-6, rtol=0
        )
        torch.testing.assert_close(model(batch[:1], prev), model(short, prev), atol=1e-6, rtol=0)


def test_decoder_does_not_look_ahead() -> None:
    model = make_model(tiny())
    g = torch.Generator().manual_seed(4)
    src, prev = random_tokens(2, 6, g), random_tokens(2, 7, g)
    changed = prev.clone()
    changed[:, 4:] = random_tokens(2, 3, g)
    with torch.no_grad():
        before, after = model(src, prev), model(src, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_encoder_gradients_are_scaled_by_twice_the_attention_layers() -> None:
    model = make_model(tiny(dropout=0.0))
    g = torch.Generator().manual_seed(5)
    src, prev = random_tokens(2, 6, g), random_tokens(2, 5, g)
    target = random_tokens(2, 5, g)

    def encoder_out_grad(scale: float) -> torch.Tensor:
        model.zero_grad()
        model.encoder_grad_scale = scale
        F.cross_entropy(model(src, prev).transpose(1, 2), target).backward()
        return model.encoder_out.parametrizations.weight.original1.grad.clone()

    assert model.encoder_grad_scale == 1 / (2 * 3)  # three decoder layers, one attention each
    torch.testing.assert_close(encoder_out_grad(1 / 6), encoder_out_grad(1.0) / 6)


def test_weight_normalised_layers_start_at_the_papers_scale() -> None:
    torch.manual_seed(0)
    cfg = ConvS2SConfig(embed_dim=64, encoder_layers=[[256, 3]], decoder_layers=[[256, 3]], dropout=0.2)
    model = ConvS2S(cfg, vocab_size=VOCAB, pad_id=PAD)
    conv = model.encoder_layers[0].conv
    assert hasattr(conv, "parametrizations")  # weight = g v / |v|, per output channel
    expected = math.sqrt(4 * (1 - 0.2) / (3 * 256))  # sqrt(4 (1 - p) / (k d))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    linear = model.decoder_layers[0].attention.in_proj
    assert linear.weight.std().item() == pytest.approx(
        math.sqrt(1 / 256), rel=0.05
    )  # sqrt((1 - p) / d), p = 0
    assert model.decoder_embed.weight[PAD].abs().sum() == 0


def test_forward_flops_matches_a_hand_count() -> None:
    # E=4, O=3, V=24; encoder [6,3] -> [8,1], decoder [6,3] -> [6,3].
    cfg = ConvS2SConfig(
        embed_dim=4, encoder_layers=[[6, 3], [8, 1]], decoder_layers=[[6, 3], [6, 3]], out_embed_dim=3
    )
    model = ConvS2S(cfg, vocab_size=VOCAB, pad_id=PAD)
    B, S, T = 2, 5, 7
    encoder = S * (2 * 4 * 6)  # embedding -> 6 channels
    encoder += S * (2 * 3 * 6 * 12)  # conv k=3, 6 -> 2 x 6
    encoder += S * (2 * 1 * 6 * 16 + 2 * 6 * 8)  # conv k=1, 6 -> 2 x 8, and the residual projection 6 -> 8
    encoder += S * (2 * 8 * 4)  # 8 channels -> embedding
    attention = T * (2 * 6 * 4 + 2 * S * 4 + 2 * S * 4 + 2 * 4 * 6)  # query, scores, context, out
    decoder = T * (2 * 4 * 6) + 2 * (T * (2 * 3 * 6 * 12) + attention)
    decoder += T * (2 * 6 * 3 + 2 * 3 * VOCAB)  # 6 -> out_embed 3 -> vocab
    assert model.forward_flops(B, S, T) == B * (encoder + decoder)


def analytic_parameter_count(cfg: ConvS2SConfig, vocab_size: int) -> int:
    E, out, V = cfg.embed_dim, cfg.out_embed_dim, vocab_size

    def linear(n_in: int, n_out: int) -> int:  # weight v, one norm g per output, bias
        return n_in * n_out + 2 * n_out

    def conv(c_in: int, c_out: int, k: int) -> int:  # 2 c_out outputs for the GLU
        return k * c_in * 2 * c_out + 2 * (2 * c_out)

    def side(layers: list[list[int]], attention: bool) -> int:
        count = V * E + cfg.max_positions * E  # word and position embeddings
        count += linear(E, layers[0][0]) + linear(layers[-1][0], E)
        c_in = layers[0][0]
        for c_out, k in layers:
            count += conv(c_in, c_out, k) + (linear(c_in, c_out) if c_in != c_out else 0)
            if attention:  # in_proj, out_proj
                count += linear(c_out, E) + linear(E, c_out)
            c_in = c_out
        return count

    assert not cfg.share_embeddings
    decoder = side(cfg.decoder_layers, True) - linear(cfg.decoder_layers[-1][0], E)
    decoder += linear(cfg.decoder_layers[-1][0], out) + linear(out, V)
    return side(cfg.encoder_layers, False) + decoder


def compose_preset(name: str):
    ConfigStore.instance().store(group="model", name="convs2s_schema", node=ConvS2SConfig)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(overrides=[f"+model={name}"]).model


@pytest.mark.parametrize("preset", ["convs2s", "convs2s_tiny"])
def test_presets_build_with_the_expected_parameter_count(preset: str) -> None:
    node = compose_preset(preset)
    counts = {}
    for vocab_size in (37000, 1000):
        with torch.device("meta"):
            counts[vocab_size] = count_parameters(build_model(node, vocab_size=vocab_size, pad_id=PAD))
    print(f"{preset}: {counts[37000]:,} parameters at vocab 37000, {counts[1000]:,} at vocab 1000")
    model = build_model(node, vocab_size=1000, pad_id=PAD).eval()  # really, on the CPU
    assert isinstance(model, ConvS2S)
    for vocab_size, count in counts.items():
        assert count == analytic_parameter_count(model.cfg, vocab_size)
    assert count_parameters(model) == counts[1000]
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 3]]), torch.tensor([[2, 7]]))
    assert logits.shape == (1, 2, 1000) and torch.isfinite(logits).all()
    if preset == "convs2s":
        layers = [[512, 3]] * 9 + [[1024, 3]] * 4 + [[2048, 1]] * 2
        assert model.cfg.encoder_layers == layers and model.cfg.decoder_layers == layers
        assert (model.cfg.embed_dim, model.cfg.out_embed_dim) == (768, 512)


def test_shared_embeddings_tie_the_decoder_input_and_output() -> None:
    model = make_model(tiny(share_embeddings=True, out_embed_dim=16))
    assert model.output.weight is model.decoder_embed.weight
    with pytest.raises(ValueError, match="out_embed_dim == embed_dim"):
        tiny(share_embeddings=True, out_embed_dim=12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder_layers": []}, "model.encoder_layers"),
        ({"decoder_layers": [[32, 3, 1]]}, "model.decoder_layers"),
        ({"encoder_layers": [[32, 0]]}, "model.encoder_layers"),
        ({"dropout": -0.1}, "model.dropout"),
        ({"max_positions": 0}, "model.max_positions"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_sequences_longer_than_max_positions_are_refused() -> None:
    model = make_model(tiny(max_positions=6))
    assert model.max_positions == 6
    with pytest.raises(ValueError, match="max_positions=6"):
        model.encode(torch.full((1, 7), 4))
    memory, state = model.encode(torch.full((1, 3), 4)), DecoderState()
    for _ in range(6):
        model.decode(torch.full((1, 1), 4), memory, state)
    with pytest.raises(ValueError, match="max_positions=6"):
        model.decode(torch.full((1, 1), 4), memory, state)


def test_tiny_model_overfits_eight_pairs() -> None:
    torch.manual_seed(0)
    cfg = tiny(dropout=0.0, embed_dim=32, encoder_layers=[[64, 3]] * 2, decoder_layers=[[64, 3]] * 2)
    model = ConvS2S(cfg, vocab_size=VOCAB, pad_id=PAD)
    g = torch.Generator().manual_seed(6)
    src, target = random_tokens(8, 7, g), random_tokens(8, 6, g)
    src[::2, 5:] = PAD
    target[::3, 4:] = PAD
    prev = torch.cat([torch.full((8, 1), 2), target[:, :-1]], dim=1)  # BOS + target, shifted
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(src, prev).transpose(1, 2), target, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]
