"""`bench layers`: the paper's Table 1 measured. FLOP formulas, the path-length and sequential-operation
probes, the slope and crossover arithmetic, and the command end to end (no timing assertions)."""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import run_cli
from transformer_mt import cli
from transformer_mt.bench.layer_probes import (
    LAYER_TYPES,
    build_layer,
    critical_path,
    layer_flops,
    lstm_sweep,
    path_length,
    reference_kernels,
    saved_activation_bytes,
    smallest_depth,
)
from transformer_mt.bench.layers import crossover, loglog_slope, parse_config


def test_flop_formulas_match_hand_counts():
    # n = 4, d = 2, self-attention: Q, K, V, O projections are 4 products of (4 x 2)(2 x 2), 16
    # multiply-adds each; Q K^T is (4 x 2)(2 x 4) = 32 and weights times V (4 x 4)(4 x 2) = 32.
    assert layer_flops("self_attention", 1, 4, 2, window=1, kernel=3) == 2 * (4 * 16 + 32 + 32)
    # n = 10, r = 4: 3 query blocks (10 padded to 12), each of 4 queries against 12 keys, d = 2:
    # Q K^T and weights times V are 12 x 12 x 2 multiply-adds each; projections 4 x 10 x 2 x 2.
    assert layer_flops("restricted_attention", 1, 10, 2, window=4, kernel=3) == 2 * (160 + 2 * 288)
    # r >= n - 1 covers every key: dense attention.
    assert layer_flops("restricted_attention", 1, 4, 2, window=3, kernel=3) == 2 * (4 * 16 + 32 + 32)
    # LSTM, n = 3, d = 2: per step 4 gates x (input (1 x 2)(2 x 2) + state (1 x 2)(2 x 2)) = 32.
    assert layer_flops("recurrent", 1, 3, 2, window=1, kernel=3) == 2 * 3 * 32
    # Convolution k = 3, n = 5, d = 2: each output (5 x 2) reads 3 x 2 inputs.
    assert layer_flops("convolution", 1, 5, 2, window=1, kernel=3) == 2 * 5 * 2 * 6
    assert layer_flops("dilated_convolution", 1, 5, 2, window=1, kernel=3) == 2 * 5 * 2 * 6
    # Separable: depthwise 5 x 2 outputs of 3 inputs each, pointwise (5 x 2)(2 x 2).
    assert layer_flops("separable_convolution", 1, 5, 2, window=1, kernel=3) == 2 * (30 + 20)
    # Linear in the batch.
    assert layer_flops("convolution", 3, 5, 2, window=1, kernel=3) == 3 * 120


@pytest.mark.parametrize("kind", LAYER_TYPES)
@pytest.mark.parametrize("n, d", [(8, 8), (19, 16), (32, 8)])
def test_flop_formulas_match_torch_flop_counter(kind, n, d):
    torch.manual_seed(0)
    layer = build_layer(kind, d, heads=2, window=4, kernel=3)
    x = torch.randn(2, n, d)
    # The reference kernels, so that the LSTM runs as the matrix products the counter sees
    # (oneDNN's fused LSTM is one opaque call that it counts as 0).
    with reference_kernels(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == layer_flops(kind, 2, n, d, window=4, kernel=3)


def test_unknown_layer_type_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        layer_flops("transformer", 1, 4, 4, window=1, kernel=3)


def test_smallest_depth_finds_the_threshold():
    for threshold in range(1, 40):
        assert smallest_depth(lambda depth, t=threshold: depth >= t, 40) == threshold
    assert smallest_depth(lambda depth: depth >= 41, 40) is None


def probe(kind: str, n: int, window: int = 4, kernel: int = 3) -> int | None:
    return path_length(kind, n, d=4, window=window, kernel=kernel)


def test_path_length_of_self_attention_is_one_at_every_n():
    assert [probe("self_attention", n) for n in (4, 16, 64)] == [1, 1, 1]


def test_path_length_of_the_recurrence_is_n():
    assert [probe("recurrent", n) for n in (4, 8, 16, 32)] == [4, 8, 16, 32]


@pytest.mark.parametrize("kernel", [2, 3, 5])
@pytest.mark.parametrize("kind", ["convolution", "separable_convolution"])
def test_path_length_of_a_convolution_is_n_over_k(kind, kernel):
    # A causal kernel of width k moves a signal k - 1 positions per layer.
    for n in (8, 16, 33):
        assert probe(kind, n, kernel=kernel) == math.ceil((n - 1) / (kernel - 1))


def test_path_length_of_restricted_attention_is_n_over_r():
    for window in (2, 4):
        for n in (8, 16, 33):
            assert probe("restricted_attention", n, window=window) == math.ceil((n - 1) / window)


@pytest.mark.parametrize("kernel", [2, 3])
def test_path_length_of_dilated_convolution_is_log_k_n(kernel):
    for n in (8, 16, 64):
        assert probe("dilated_convolution", n, kernel=kernel) == math.ceil(math.log(n, kernel) - 1e-9)


def test_lstm_sweeps_equal_the_recurrence():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 4, batch_first=True).double()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    expected = lstm(x)[0]
    h = c = torch.zeros_like(x)
    for steps in range(1, 7):
        h, c = lstm_sweep(lstm, x, h, c)
        torch.testing.assert_close(h[:, :steps], expected[:, :steps])  # exact where `steps` reach
    torch.testing.assert_close(h, expected)


def test_sequential_operations_are_constant_for_attention_and_linear_for_the_recurrence():
    def kernels(kind: str, n: int) -> int:
        layer = build_layer(kind, 8, heads=2, window=4, kernel=3)
        return critical_path(layer, torch.randn(1, n, 8))[0]

    for kind in ("self_attention", "restricted_attention", "convolution", "separable_convolution"):
        assert kernels(kind, 8) == kernels(kind, 32) == kernels(kind, 64)
    per_step = (kernels("recurrent", 32) - kernels("recurrent", 16)) / 16
    assert per_step >= 1
    assert kernels("recurrent", 64) - kernels("recurrent", 32) == 32 * per_step


def test_a_convolution_saves_its_padded_input_for_backward():
    layer = build_layer("convolution", 8, heads=2, window=4, kernel=3)
    assert saved_activation_bytes(layer, torch.randn(2, 10, 8)) == 2 * 8 * (10 + 2) * 4  # float32


def test_loglog_slope_and_crossover():
    ns = [16, 32, 64, 128, 256]
    assert loglog_slope(ns, [n * n for n in ns]) == pytest.approx(2)
    assert loglog_slope(ns, [3.0] * 5) == pytest.approx(0)
    # n^2 d against 2 n d^2 at d = 32 cross at n = 2 d = 64.
    found = crossover(ns, [n * n * 32 for n in ns], [2 * n * 32 * 32 for n in ns])
    assert found["n"] == pytest.approx(64)
    assert found["ratio_first"] == pytest.approx(0.25) and found["ratio_last"] == pytest.approx(4)
    assert crossover(ns, [1.0] * 5, [2.0] * 5)["n"] is None


@pytest.mark.parametrize(
    "override, message",
    [("lenghts=[8]", "lenghts"), ("layers=[mamba]", "mamba"), ("widths=[30]", "multiple of heads")],
)
def test_bad_config_is_one_clear_error(override, message):
    with pytest.raises(ValueError, match=message):
        parse_config([override])


def test_cli_runs_end_to_end_and_writes_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    output, plot = tmp_path / "out" / "layers.json", tmp_path / "layers.png"
    result = run_cli("bench", "layers", "quick=true", f"output={output}", f"plot={plot}", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Maximum path length" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")
    results = json.loads(output.read_text())
    lengths, probe_lengths = results["config"]["lengths"], results["config"]["probe_lengths"]
    assert len(results["measurements"]) == len(LAYER_TYPES) * len(lengths) * len(results["config"]["widths"])
    paths = {(p["layer"], p["n"]): p["path_length"] for p in results["path_length"]}
    assert [paths[("self_attention", n)] for n in probe_lengths] == [1] * len(probe_lengths)
    assert [paths[("recurrent", n)] for n in probe_lengths] == probe_lengths
    flops_slopes = {(s["layer"], s["d"]): s["flops"] for s in results["slopes_vs_n"]}
    assert flops_slopes[("recurrent", 16)] == pytest.approx(1)


@pytest.mark.parametrize(
    "argv, status, stream, expected",
    [
        (["bench", "layers", "--help"], 0, "out", "window: 16"),
        (["bench", "layers", "windoww=3"], 2, "err", "windoww"),
        (["bench", "fly"], 2, "err", "unknown benchmark 'fly'"),
        (["bench"], 2, "err", "name a benchmark"),
    ],
)
def test_cli_help_and_errors_are_for_people(capsys, argv, status, stream, expected):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == status
    captured = capsys.readouterr()
    text = captured.out if stream == "out" else captured.err
    assert expected in text
    if status:
        assert len(text.strip().splitlines()) == 1
