"""The command line: help, config validation before any work, and every shipped preset composing."""

import os
import select
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, files_overrides, run_cli, trained_sample_run, write_small_corpus
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
        ("trainer.lr=-1", "trainer.lr must be a positive number, got -1.0"),
    ],
)
def test_bad_config_is_one_clear_error_before_any_work(tmp_path, override, message):
    result = run_cli("train", override, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize(
    "command, override, message",
    [
        ("train", "+trainer.max_step=1", "unknown key trainer.max_step (did you mean trainer.max_steps?)"),
        ("train", "trainer.max_step=1", "unknown key trainer.max_step (did you mean trainer.max_steps?)"),
        ("train", "+model.windw=3", "unknown key model.windw (did you mean model.attention_window?)"),
        ("prepare", "++data.vocab=500", "unknown key data.vocab (did you mean data.vocab_size?)"),
        ("train", "+foo=1", "unknown key foo; known keys: data, model, trainer, decoding, output_dir"),
        ("train", "+trainer.foo=1", "unknown key trainer.foo; trainer's keys: max_tokens, update_freq,"),
        ("train", "trainer.lenpn=1", "unknown key trainer.lenpn (did you mean decoding.lenpen?)"),
        ("evaluate", "beam=5", "unknown key beam (did you mean decoding.beam?)"),
        ("evaluate", "lenpen=1.6", "unknown key lenpen (did you mean decoding.lenpen?)"),
        ("translate", "nbest=2", "unknown key nbest (did you mean decoding.nbest?)"),
        ("translate", "+decoding.bem=2", "unknown key decoding.bem (did you mean decoding.beam?)"),
        ("average", "+lst=3", "unknown key lst (did you mean last?)"),
    ],
)
def test_unknown_keys_are_refused_with_or_without_plus_and_the_closest_is_suggested(command, override, message):
    """`+key=value` used to add a key that nothing reads (silently ignored); a misspelt key without
    `+` was refused, with Hydra's advice to add it with `+`. Both now say what was probably meant."""
    with pytest.raises(ConfigError) as err:
        compose_config(command, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_an_unknown_key_is_one_line_from_every_command(tmp_path):
    for command, typo in [("prepare", "+data.vocab=100"), ("train", "+trainer.max_step=1"), ("evaluate", "+bem=2"),
                          ("translate", "+decoding.nbst=2"), ("average", "+lst=2")]:  # fmt: skip
        output_dir = [f"output_dir={tmp_path / 'run'}"] if command in ("prepare", "train") else []
        result = run_cli(command, typo, *output_dir)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and "(did you mean" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.lr=0", "trainer.lr must be a positive number"),  # -1 trained by gradient ascent
        ("trainer.lr=nan", "trainer.lr must be a positive number"),
        ("trainer.lr_scale=-2", "trainer.lr_scale must be a positive number"),
        ("trainer.adam_eps=0", "trainer.adam_eps must be a positive number"),
        ("trainer.adam_betas=[0.9,1.0]", "trainer.adam_betas must both be in [0, 1)"),
        ("trainer.weight_decay=-0.01", "trainer.weight_decay must be 0 or a positive number"),
        ("trainer.clip_norm=-1", "trainer.clip_norm must be 0 or a positive number"),
        ("trainer.min_lr=-1e-5", "trainer.min_lr must be 0 or a positive number"),
        ("trainer.max_minutes=inf", "trainer.max_minutes must be 0 or a positive number"),
        ("trainer.keep_last=-1", "trainer.keep_last must be 0 or more"),
        ("trainer.patience=-1", "trainer.patience must be 0 or more"),
        ("trainer.max_epochs=-1", "trainer.max_epochs must be 0 or more"),
        ("trainer.seed=-1", "trainer.seed must be 0 or more"),
        ("trainer.valid_bleu_sentences=0", "trainer.valid_bleu_sentences must be at least 1"),
        ("trainer.peak_flops=0", "trainer.peak_flops must be positive"),
        ("data.character_coverage=0", "data.character_coverage must be in (0, 1]"),
        ("data.max_len=0", "data.max_len (0) and data.max_chars (4096) must be at least 1"),
        ("data.max_len_ratio=inf", "max_len_ratio (inf) >= 1"),
        ("decoding.max_len_a=nan", "max_len_a=nan"),
        ("decoding.temperature=inf", "temperature=inf must be a positive number"),
        ("model.dropout=nan", "dropout=nan must be in [0, 1)"),
        ("model.heads=0", "heads=0 must be a positive integer"),
    ],
)
def test_values_that_make_no_sense_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        to_objects(compose_config("train", [override]))
    assert message in str(err.value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, checkpoint) of a one-step run of a tiny model, made by the CLI."""
    folder = tmp_path_factory.mktemp("tiny")
    corpus = write_small_corpus(folder / "corpus", train_size=200)
    run = folder / "run"
    quick = ["trainer.max_steps=1", "trainer.max_tokens=512", "trainer.valid_bleu=false", "trainer.device=cpu"]
    result = run_cli("train", *files_overrides(corpus), *TINY_MODEL, *quick, f"output_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return corpus, run / "checkpoints/checkpoint_last.pt"


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "device='gpu' is not one of: auto, cpu, cuda"),  # was a RuntimeError traceback
        ("cuda", "device=cuda but no CUDA device is visible; use device=cpu"),  # was an AssertionError
    ],
)
def test_decoding_commands_refuse_a_device_they_cannot_use_in_one_line(tiny_run, command, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    corpus, checkpoint = tiny_run
    files = [f"input={corpus}/test.en", f"reference={corpus}/test.de"] if command == "evaluate" else []
    result = run_cli(command, f"checkpoint={checkpoint}", f"device={device}", *files, stdin="a dog\n")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == f"transformer-mt {command}: error: {message}"


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
    """The same terms where they are not tuned per family (issue 18): the same data, vocabulary, time
    cap, schedule shape, label smoothing, seed and beam; the model, its peak rate, warm-up, batches,
    clipping, the steps (those that fit the hour) and the length penalty (each chosen for its family)
    may differ."""
    transformer = to_objects(compose_config("train", ["experiment=multi30k_en_de"]))
    other = to_objects(compose_config("train", [f"experiment={baseline}"]))
    assert other.data == transformer.data
    assert replace(other.decoding, lenpen=0) == replace(transformer.decoding, lenpen=0)
    for key in ("update_freq", "max_minutes", "schedule", "label_smoothing", "seed", "precision"):
        assert getattr(other.trainer, key) == getattr(transformer.trainer, key), key
    assert other.model.arch != "transformer" and other.output_dir != transformer.output_dir


@pytest.mark.parametrize(
    "experiment, arch, max_tokens, max_steps, lr, warmup, lenpen",
    [
        ("multi30k_en_de", "transformer", 4096, 5600, 0.004, 1000, 1.6),
        ("multi30k_en_de_convs2s", "convs2s", 2048, 7000, 0.001, 400, 2.0),
        ("multi30k_en_de_lstm", "lstm", 2048, 2500, 0.001, 400, 1.6),
    ],
)
def test_multi30k_presets_carry_the_settings_docs_results_reports(experiment, arch, max_tokens, max_steps, lr, warmup, lenpen):
    """docs/results.md gives each preset's score with these settings: a change of the preset must come
    with a new measurement (and a change here)."""
    run = to_objects(compose_config("train", [f"experiment={experiment}"]))
    trainer = run.trainer
    assert run.model.arch == arch and run.data.vocab_size == 6000 and run.decoding.lenpen == lenpen
    assert (trainer.max_tokens, trainer.max_steps, trainer.lr, trainer.warmup_steps) == (max_tokens, max_steps, lr, warmup)


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
