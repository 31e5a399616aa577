"""The training and decoding speed harnesses (`bench train`, `bench decode`) at tiny sizes.

No peers' virtual environments and no network: only our own step, the in-process nn.Transformer
reference, the option parsing, the FLOP count and the JSON. Nothing here times anything.
"""

import functools
import json
import sys

import pytest
import torch

from transformer_mt.bench import common, decode, train
from transformer_mt.bench.peer_scripts import harness, torch_train
from transformer_mt.bench.peers import PEERS, PeerError, ensure_venv, unsupported
from transformer_mt.models import build_model

TINY = [
    "models=[transformer_tiny]",
    "batch_size=2",
    "src_len=6",
    "tgt_len=5",
    "vocab_size=50",
    "warmup=0",
    "steps=1",
    "threads=1",
    "peak_seconds=0.01",
]


def tiny_train_config(*extra: str) -> train.TrainBenchConfig:
    return common.parse_options(train.TrainBenchConfig, [*TINY, *extra], "bench train")


def test_misspelt_option_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown option 'bach_size' \(did you mean 'batch_size'\?\)"):
        common.parse_options(train.TrainBenchConfig, ["bach_size=8"], "bench train")


def test_option_of_the_wrong_type_and_argument_without_equals_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        common.parse_options(train.TrainBenchConfig, ["batch_size=many"], "bench train")
    with pytest.raises(ValueError, match="expected key=value"):
        common.parse_options(train.TrainBenchConfig, ["batch_size"], "bench train")


def test_list_options_take_one_value_or_a_list_and_unknown_peers_and_presets_are_named():
    assert tiny_train_config("peers=torch").peers == ["torch"]
    assert tiny_train_config("peers=[torch,joeynmt]").peers == ["torch", "joeynmt"]
    with pytest.raises(ValueError, match="peers=.*opennmt"):
        tiny_train_config("peers=[opennmt]")
    with pytest.raises(ValueError, match="no model preset 'transformer_huge'"):
        tiny_train_config("models=[transformer_huge]")
    with pytest.raises(ValueError, match="precisions"):
        tiny_train_config("precisions=[fp8]")


def test_every_model_preset_loads_with_its_arch():
    for path in train.MODEL_CONFIGS.glob("*.yaml"):
        cfg = train.load_preset(path.stem)
        assert cfg["arch"] in ("transformer", "lstm", "convs2s") and "defaults" not in cfg


def test_our_step_and_the_torch_reference_give_positive_throughput_and_sane_json(tmp_path):
    cfg = tiny_train_config("peers=[torch]", "precisions=[fp32]")
    payload = train.run(cfg)
    ours, reference = payload["rows"]
    assert ours["system"] == "transformer-mt" and reference["system"] == "torch.nn.Transformer"
    for row in (ours, reference):
        assert row["status"] == "ok" and row["tokens_per_second"] > 0 and row["step_ms"] > 0
        assert row["tokens_per_second"] == pytest.approx(2 * 5 / (row["step_ms"] / 1e3))
        assert 0 < row["mfu"]
    # The same model size: nn.Transformer adds only a final LayerNorm to each stack.
    assert 0 < reference["params"] - ours["params"] <= 4 * 128
    assert ours["vs_peer"] == pytest.approx(ours["tokens_per_second"] / reference["tokens_per_second"])
    assert ours["target"] == ">= 1.1x peer fp32" and isinstance(ours["met"], bool)

    path = common.write_json(tmp_path / "train.json", payload)
    loaded = json.loads(path.read_text())
    assert loaded["benchmark"] == "train" and loaded["settings"]["batch_size"] == 2
    assert set(loaded["peak_flops"]) == {"fp32"} and loaded["peak_flops"]["fp32"] > 0
    assert "transformer-mt" in train.table(payload)


def test_model_overrides_are_measured_beside_their_preset_in_one_run():
    cfg = tiny_train_config("model_overrides.attention_window=1", "peers=[torch]", "precisions=[fp32]")
    plain, windowed, reference = train.run(cfg)["rows"]
    assert (plain["model"], windowed["model"]) == ("transformer_tiny", "transformer_tiny attention_window=1")
    assert reference["model"] == "transformer_tiny"  # the peer builds the preset as it is
    assert windowed["vs_preset"] == pytest.approx(windowed["tokens_per_second"] / plain["tokens_per_second"])
    assert "vs_preset" not in plain and "vs_peer" not in windowed and "vs_peer" in plain
    # The override reaches the model: a window of 1 leaves 3 of the 6 source keys and 2 of the 5 target keys.
    windowed_model = build_model({**train.load_preset("transformer_tiny"), "attention_window": 1}, 50, 0)
    assert windowed["flops_per_step"] == 3 * windowed_model.forward_flops(2, 6, 5) < plain["flops_per_step"]

    lstm = common.parse_options(
        train.TrainBenchConfig,
        [*TINY, "models=[lstm_tiny]", "model_overrides.input_feeding=false", "precisions=[fp32]"],
        "bench train",
    )
    rows = train.run(lstm)["rows"]
    assert [row["model"] for row in rows] == ["lstm_tiny", "lstm_tiny input_feeding=False"]
    assert rows[1]["flops_per_step"] < rows[0]["flops_per_step"]  # no h~ fed back into the first LSTM layer


def test_a_model_override_the_preset_lacks_or_refuses_is_named():
    with pytest.raises(ValueError, match="model.attention_windw is not an option of the transformer model"):
        tiny_train_config("model_overrides.attention_windw=4")
    with pytest.raises(ValueError, match="attention_window=0 must be >= 1"):
        tiny_train_config("model_overrides.attention_window=0")
    with pytest.raises(ValueError, match="unknown option 'steps.x'"):
        tiny_train_config("steps.x=1")


def test_flops_per_step_are_three_forward_passes():
    cfg = tiny_train_config("peers=[]", "precisions=[fp32]")
    (row,) = train.run(cfg)["rows"]
    model = build_model(train.load_preset("transformer_tiny"), vocab_size=50, pad_id=0)
    assert row["flops_per_step"] == 3 * model.forward_flops(2, 6, 5)
    assert row["tflops_per_second"] == pytest.approx(row["flops_per_step"] / (row["step_ms"] / 1e3) / 1e12)


def test_our_step_updates_the_weights_it_started_from():
    cfg = tiny_train_config("steps=2")
    preset = train.load_preset("transformer_tiny")
    torch.manual_seed(cfg.seed)  # measure_ours seeds the same way before building
    initial = build_model(preset, vocab_size=50, pad_id=0).state_dict()
    result = train.measure_ours(cfg, preset, "fp32", torch.device("cpu"))
    trained = result["model"].state_dict()
    # Two Adam steps at lr 1e-4 move each weight by at most about 2e-4 from the same start.
    moved = (trained["decoder_embed.weight"] - initial["decoder_embed.weight"]).abs().max().item()
    assert 0 < moved <= 3e-4
    assert len(result["step_seconds"]) == 2


def test_peers_without_a_venv_report_why():
    with pytest.raises(PeerError, match="unknown peer 'opennmt'"):
        ensure_venv("opennmt")
    reason = unsupported(PEERS["fairseq"])
    assert reason is None or "Python 3.11" in reason


def test_synthetic_batch_is_shifted_teacher_forcing_without_padding():
    args = {"seed": 3, "batch_size": 4, "src_len": 7, "tgt_len": 5, "vocab_size": 30}
    batch = harness.synthetic_batch(args, torch.device("cpu"), bos=2, eos=3)
    assert batch["src"].shape == (4, 7) and batch["prev"].shape == batch["target"].shape == (4, 5)
    assert (
        (batch["src"][:, -1] == 3).all()
        and (batch["prev"][:, 0] == 2).all()
        and (batch["target"][:, -1] == 3).all()
    )
    assert torch.equal(batch["prev"][:, 1:], batch["target"][:, :-1])
    assert (batch["src"][:, :-1] >= 4).all() and (batch["target"][:, :-1] >= 4).all()


def test_torch_reference_masks_the_future():
    args = {
        "d_model": 16,
        "heads": 2,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "ffn_dim": 32,
        "dropout": 0.0,
        "norm": "post",
        "vocab_size": 30,
        "max_positions": 10,
    }
    model = torch_train.TorchTransformer(args).eval()
    src = torch.randint(4, 30, (1, 5))
    prev = torch.randint(4, 30, (1, 6))
    changed = prev.clone()
    changed[0, 4] = (changed[0, 4] + 1 - 4) % 26 + 4
    with torch.no_grad():
        a, b = model(src, prev), model(src, changed)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-5) and not torch.allclose(a[0, 4], b[0, 4])


def test_decode_bench_runs_our_side_to_the_fixed_length(tmp_path):
    overrides = [
        "model=transformer_tiny",
        "batch_size=3",
        "src_len=5",
        "out_len=4",
        "vocab_size=40",
        "peers=[]",
        "warmup=0",
        "repeats=1",
        "threads=1",
        f"output={tmp_path / 'decode.json'}",
    ]
    assert decode.main(overrides, show_help=False) == 0
    payload = json.loads((tmp_path / "decode.json").read_text())
    rows = payload["rows"]
    assert [(r["system"], r["beam"]) for r in rows] == [("transformer-mt", 1), ("transformer-mt", 4)]
    for row in rows:
        assert row["status"] == "ok" and row["sentences_per_second"] > 0
        assert row["tokens_per_second"] == pytest.approx(4 * row["sentences_per_second"])
        assert row["output_tokens"] == 3 * 4 and row["equal_work"]  # out_len steps each, EOS held back


def test_decode_bench_on_a_file_batches_as_the_translator_and_runs_each_batch_to_its_width(tmp_path):
    words = "the a house cat dog runs sees small big old new red".split()
    gen = torch.Generator().manual_seed(0)
    lines = [
        " ".join(words[i] for i in torch.randint(0, len(words), (n,), generator=gen)) for n in range(1, 31)
    ]
    text = tmp_path / "news.en"
    text.write_text("\n".join(lines[:10] + [""] + lines[10:]) + "\n")  # the empty line is skipped
    cfg = common.parse_options(
        decode.DecodeBenchConfig,
        [
            f"input={text}",
            "max_sentences=24",
            "batch_tokens=64",
            "vocab_size=80",
            "model=transformer_tiny",
            "peers=[]",
            "warmup=1",
            "repeats=1",
            "threads=1",
            "beams=[2]",
        ],
        "bench decode",
    )
    work = decode.file_workload(cfg)
    assert work.sentences == 24
    widths = [b.size(1) for b in work.batches]
    assert widths == sorted(widths) and work.steps == widths  # length-sorted; steps = the widest source
    assert all(b.size(0) * b.size(1) <= 64 or b.size(0) == 1 for b in work.batches)
    assert all((b[:, 0] != decode.PAD).all() and (b.eq(decode.EOS).sum(1) == 1).all() for b in work.batches)
    payload = decode.run(cfg)
    (row,) = payload["rows"]
    assert row["equal_work"] and row["output_tokens"] == sum(b.numel() for b in work.batches)
    assert payload["workload"]["sentences"] == 24 and "24 sentences" in decode.table(payload)


def test_decode_bench_refuses_a_missing_input(tmp_path):
    with pytest.raises(ValueError, match="input=.*nope.txt: no such file"):
        common.parse_options(decode.DecodeBenchConfig, [f"input={tmp_path / 'nope.txt'}"], "bench decode")


def test_peers_read_the_same_sentences_in_marian_ids():
    from transformer_mt.bench.peer_scripts import marian

    args = {"vocab_size": 10, "batches": [[[5, 9, 1, 3], [4, 3, 0, 0]]], "steps": [4]}
    assert marian.marian_ids(args, args["batches"][0]) == [[5, 2, 1, 0], [4, 0]]
    ((src, mask, steps),) = marian.batches(args)
    assert src.tolist() == [[5, 2, 1, 0], [4, 0, 9, 9]] and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert steps == 4


def test_help_lists_the_options(capsys):
    assert train.main([], show_help=True) is None
    assert "batch_size: 128" in capsys.readouterr().out
    assert decode.main([], show_help=True) is None
    assert "beams:" in capsys.readouterr().out


def test_decode_bench_runs_our_exports_in_the_engines_on_equal_work(tmp_path, monkeypatch):
    """The export rows: our tiny random model exported, run by CTranslate2 (fp32 and int8) and by
    MarianMTModel.generate through the real peer scripts, here with this Python (which has the
    export extra) instead of the peers' own environments."""
    pytest.importorskip("ctranslate2", reason="pip install 'transformer-mt[export]'")
    pytest.importorskip("transformers", reason="pip install 'transformer-mt[export]'")
    monkeypatch.setattr(decode, "run_peer", functools.partial(decode.run_peer, python=sys.executable))
    cfg = common.parse_options(
        decode.DecodeBenchConfig,
        [
            "model=transformer_tiny",
            "batch_size=3",
            "src_len=5",
            "out_len=4",
            "vocab_size=40",
            "beams=[1,2]",
            "precisions=[fp32,int8]",
            "peers=[ctranslate2_export,transformers_export]",
            "warmup=0",
            "repeats=1",
            "threads=1",
        ],
        "bench decode",
    )
    payload = decode.run(cfg)
    rows = {(r["system"], r["precision"], r["beam"]): r for r in payload["rows"]}
    systems = ["transformer-mt", "CTranslate2 (our export)", "transformers (our export)"]
    expected = {(s, "fp32", b) for s in systems for b in (1, 2)}
    expected |= {(s, "int8", b) for s in systems[:2] for b in (1, 2)}  # transformers has no int8 row
    assert set(rows) == expected
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["equal_work"] and row["output_tokens"] == 3 * 4, row
    assert "vs_ct2_fp32" in rows[("transformer-mt", "int8", 2)]
    assert "CTranslate2 (our export)" in decode.table(payload)
