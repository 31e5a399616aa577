"""The command line: help, config validation before any work, and every shipped preset composing."""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli, trained_sample_run
from transformer_mt.config import CONFIG_DIR, ConfigError, compose_config, explicit_keys, to_objects


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("prepare", "train", "evaluate", "translate", "average"):
        assert command in result.stdout


def test_command_help_shows_the_config():
    result = run_cli("train", "--help", "model=transformer_base")
    assert result.returncode == 0, result.stderr
    assert "d_model: 512" in result.stdout and "max_tokens" in result.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_modl=512", "d_modl"),
        ("trainer.max_tokens=lots", "max_tokens"),
        ("model=transformer_huge", "transformer_huge"),
        ("trainer.update_freq=0", "update_freq"),
        ("trainer.precision=fp8", "precision"),
        ("trainer.max_minutes=-5", "max_minutes"),
    ],
)
def test_bad_config_is_one_clear_error_before_any_work(tmp_path, override, message):
    result = run_cli("train", override, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was started


def test_unknown_command_is_refused():
    result = run_cli("fly")
    assert result.returncode == 2 and "unknown command" in result.stderr


def shipped(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", shipped("experiment"))
def test_every_experiment_composes(experiment):
    run = to_objects(compose_config("train", [f"experiment={experiment}"]))
    assert run.output_dir and run.model.arch in ("transformer", "lstm", "convs2s")


@pytest.mark.parametrize(
    ("experiment", "vocab", "millions", "steps", "dropout"),
    [
        ("wmt14_en_de_base", 37000, 65, 100_000, 0.1),  # Table 3 "base": 65M
        ("wmt14_en_de_big", 37000, 213, 300_000, 0.3),  # Table 3 "big": 213M
        ("wmt14_en_fr_big", 32000, 213, 300_000, 0.1),  # big with En-Fr's P_drop 0.1 (section 6.1)
    ],
)
def test_wmt14_recipes_carry_the_papers_settings(experiment, vocab, millions, steps, dropout):
    """Section 5 and Table 3: the vocabulary, model size (within 5%; a 32k vocabulary is a little
    smaller), ~25k target tokens per update on 8 devices, warm-up, label smoothing, beam and lenpen."""
    import torch

    from transformer_mt.models import build_model, count_parameters

    run = to_objects(compose_config("train", [f"experiment={experiment}"]))
    assert run.data.vocab_size == vocab and run.model.dropout == dropout
    with torch.device("meta"):  # sizes only
        count = count_parameters(build_model(run.model, vocab_size=vocab, pad_id=0))
    assert abs(count / 1e6 - millions) <= 0.05 * millions, count
    assert run.trainer.max_tokens * 8 * run.trainer.update_freq == 25_000
    assert (run.trainer.max_steps, run.trainer.warmup_steps, run.trainer.label_smoothing) == (steps, 4000, 0.1)
    assert (run.decoding.beam, run.decoding.lenpen) == (4, 0.6)


@pytest.mark.parametrize("baseline", ["multi30k_en_de_lstm", "multi30k_en_de_convs2s"])
def test_multi30k_baselines_train_on_the_transformer_recipes_terms(baseline):
    """Equal terms (the paper's comparison): the same data, vocabulary, batches, time cap and schedule
    shape; only the model, its peak rate, clipping and the steps (about equal time) differ."""
    transformer = to_objects(compose_config("train", ["experiment=multi30k_en_de"]))
    other = to_objects(compose_config("train", [f"experiment={baseline}"]))
    assert other.data == transformer.data and other.decoding == transformer.decoding
    for key in ("max_tokens", "update_freq", "max_minutes", "schedule", "warmup_steps", "label_smoothing", "seed"):
        assert getattr(other.trainer, key) == getattr(transformer.trainer, key), key
    assert other.model.arch != "transformer" and other.output_dir != transformer.output_dir


@pytest.mark.parametrize("model", shipped("model"))
def test_every_model_preset_composes(model):
    run = to_objects(compose_config("train", [f"model={model}"]))
    assert run.model.arch in ("transformer", "lstm", "convs2s")


@pytest.mark.parametrize("data", shipped("data"))
def test_every_data_preset_composes(data):
    files = ["data.train=c/train", "data.valid=c/valid", "data.test=c/test"] if data == "files" else []
    to_objects(compose_config("train", [f"data={data}", *files]))


def test_decoding_options_sit_in_the_decoding_node_of_translate():
    overrides = ["decoding.beam=5", "decoding.nbest=2", "checkpoint=[a.pt,b.pt]"]
    cfg = to_objects(compose_config("translate", overrides))
    assert cfg.decoding.beam == 5 and cfg.decoding.nbest == 2 and list(cfg.checkpoint) == ["a.pt", "b.pt"]
    with pytest.raises(ConfigError, match="nbest"):
        to_objects(compose_config("translate", ["decoding.beam=2", "decoding.nbest=3"]))
    assert explicit_keys(overrides, "decoding") == {"beam", "nbest"}
    assert explicit_keys(["+decoding.lenpen=1", "decoding=default"], "decoding") is None


def test_configs_ship_inside_the_package():
    assert (Path(CONFIG_DIR) / "trainer" / "default.yaml").is_file()


def _read_line(stream, timeout: float) -> str | None:
    """One line from a pipe, or None if none arrives within `timeout` seconds."""
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(stream.fileno(), 1)
        if not chunk:
            return None
        data += chunk
    return data.decode("utf-8")[:-1]


def test_translate_over_a_pipe_answers_each_line_with_buffer_size_1(tmp_path_factory):
    """A program that writes one line and waits gets its translation while the pipe stays open."""
    checkpoint = trained_sample_run(tmp_path_factory, "post") / "checkpoints" / "checkpoint_last.pt"
    process = subprocess.Popen(
        [sys.executable, "-m", "transformer_mt", "translate", f"checkpoint={checkpoint}", "buffer_size=1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in ("The old woman sees the small dog.", "", "Today the teacher reads a book."):
            process.stdin.write(line.encode() + b"\n")
            process.stdin.flush()
            answer = _read_line(process.stdout, timeout=120)
            assert answer is not None, f"no translation of {line!r} while the pipe is open"
            assert (answer == "") == (line == ""), (line, answer)
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
