"""The trainer: bit-exact resume, DDP equivalence, mixed precision on CPU, averaging, validation."""

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_MODEL, files_overrides, run_cli
from transformer_mt.checkpoint import load_checkpoint
from transformer_mt.data.sample import write_sample

QUICK = [
    "trainer.max_tokens=512",
    "trainer.schedule=inverse_sqrt",
    "trainer.lr=0.003",
    "trainer.warmup_steps=10",
    "trainer.log_every=1",
    "trainer.valid_bleu=false",
]


def fresh_run(prepared: Path, tmp_path: Path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(prepared / "data", run / "data")
    return run


def losses(run: Path) -> dict[int, str]:
    """step -> the logged training loss text, exactly as written."""
    text = (run / "train.log").read_text()
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"step (\d+) \| epoch \S+ \| loss (\S+)", text)}


def train(run: Path, corpus: Path, *extra: str, env=None):
    result = run_cli("train", *files_overrides(corpus), *TINY_MODEL, *QUICK, f"output_dir={run}", *extra, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_is_bit_exact(prepared, corpus, tmp_path):
    straight = fresh_run(prepared, tmp_path, "straight")
    train(straight, corpus, "trainer.max_steps=12", "trainer.save_every=4", "trainer.valid_every=4")

    interrupted = fresh_run(prepared, tmp_path, "interrupted")
    train(interrupted, corpus, "trainer.max_steps=6", "trainer.save_every=4", "trainer.valid_every=4")
    train(interrupted, corpus, "trainer.max_steps=12", "trainer.save_every=4", "trainer.valid_every=4")

    assert losses(straight) == losses(interrupted)
    assert sorted(losses(straight)) == list(range(1, 13))
    a, b = params(straight / "checkpoints/checkpoint_last.pt"), params(interrupted / "checkpoints/checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_gloo_ranks_equal_one_rank_with_update_freq_2(prepared, corpus, tmp_path):
    common = ["trainer.max_steps=3", "model.dropout=0.0", "trainer.device=cpu", "trainer.save_every=3",
              "trainer.valid_every=3"]
    single = fresh_run(prepared, tmp_path, "single")
    train(single, corpus, *common, "trainer.update_freq=2")

    ddp = fresh_run(prepared, tmp_path, "ddp")
    result = __import__("subprocess").run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "transformer_mt", "train", *files_overrides(corpus), *TINY_MODEL, *QUICK, *common,
         f"output_dir={ddp}", "trainer.update_freq=1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = params(single / "checkpoints/checkpoint_last.pt"), params(ddp / "checkpoints/checkpoint_last.pt")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name
    # and it really trained: the parameters moved from their initial values
    assert load_checkpoint(single / "checkpoints/checkpoint_last.pt")["step"] == 3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(prepared, corpus, tmp_path, precision):
    run = fresh_run(prepared, tmp_path, precision)
    train(run, corpus, "trainer.max_steps=30", f"trainer.precision={precision}", "trainer.device=cpu",
          "trainer.valid_every=30", "trainer.save_every=30")
    logged = {step: float(v) for step, v in losses(run).items()}
    assert all(v == v and v < 1e4 for v in logged.values())  # finite
    assert sum(list(logged.values())[-5:]) < sum(list(logged.values())[:5])  # it learns
    if precision == "fp16":
        assert "loss scale" in (run / "train.log").read_text()


def test_average_cli_writes_the_mean_of_the_last_checkpoints(prepared, corpus, tmp_path):
    run = fresh_run(prepared, tmp_path, "avg")
    train(run, corpus, "trainer.max_steps=6", "trainer.save_every=2", "trainer.valid_every=6", "trainer.keep_last=3")
    result = run_cli("average", f"output_dir={run}", "last=3")
    assert result.returncode == 0, result.stderr
    out = run / "checkpoints/checkpoint_avg_last3.pt"
    parts = [params(run / f"checkpoints/checkpoint_{s}.pt") for s in (2, 4, 6)]
    averaged = params(out)
    for name, value in averaged.items():
        if value.is_floating_point():
            assert torch.allclose(value, sum(p[name] for p in parts) / 3, atol=1e-6)


def test_max_minutes_stops_after_the_update_that_spends_the_budget_and_resume_respects_it(prepared, corpus, tmp_path):
    run = fresh_run(prepared, tmp_path, "budget")
    budget = ["trainer.max_steps=50", "trainer.max_minutes=0.0001", "trainer.valid_every=50"]  # 6 ms
    train(run, corpus, *budget)
    assert sorted(losses(run)) == [1]
    assert "stopped: reached max_minutes=0.0001 at step 1" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints/checkpoint_last.pt")["step"] == 1

    train(run, corpus, *budget)  # the budget counts the whole run, so a resume has nothing left
    assert "reached max_minutes=0.0001 before this resume (step 1)" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints/checkpoint_last.pt")["step"] == 1


def test_the_end_of_training_names_the_best_checkpoint_and_what_to_run_next(prepared, corpus, tmp_path):
    run = fresh_run(prepared, tmp_path, "end")
    result = train(run, corpus, "trainer.max_steps=6", "trainer.save_every=2", "trainer.valid_every=3")
    best = run / "checkpoints/checkpoint_best.pt"
    assert re.search(rf"best checkpoint: {re.escape(str(best))} \(step [36], valid loss \d+\.\d{{3}}\)", result.stderr)
    assert f"next: transformer-mt evaluate checkpoint={best}" in result.stderr
    assert f"transformer-mt average output_dir={run} last=3 && transformer-mt evaluate" in result.stderr
    assert re.search(r"valid \| loss \S+ \| nll \S+ \| ppl \S+ \| step 3 \| \d+\.\d s loss\n", result.stderr)
    evaluate = result.stderr.split("next: transformer-mt ")[1].splitlines()[0].split()
    assert run_cli(*evaluate).returncode == 0  # the command works as printed


def test_target_bleu_stops_at_the_first_validation_that_reaches_it_and_logs_time_and_flops(tmp_path):
    """MLPerf's protocol at a toy scale: the embedded sample, a target a small model reaches in ~100 steps."""
    sample = ["data.vocab_size=500", "trainer.max_tokens=1024", "trainer.warmup_steps=100", "trainer.lr=0.006"]
    model = ["model=transformer_tiny", "model.d_model=64", "model.ffn_dim=256", "model.heads=4", "model.norm=pre"]
    model += ["model.encoder_layers=2", "model.decoder_layers=2", "model.dropout=0.0"]
    target = ["trainer.target_bleu=0.3", "trainer.valid_every=50", "trainer.valid_bleu_sentences=20", "decoding.beam=1"]
    run = tmp_path / "target"
    result = run_cli(
        "train", *sample, *model, *target, "trainer.max_steps=1000", "trainer.device=cpu", f"output_dir={run}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bleus = [(int(s), float(b)) for b, s in re.findall(r"\| bleu (\S+) \| step (\d+)", result.stderr)]
    assert bleus[-1][1] >= 0.3 and all(b < 0.3 for _, b in bleus[:-1]) and bleus[-1][0] < 1000
    assert f"stopped: reached target_bleu=0.3: valid BLEU {bleus[-1][1]:.2f} at step {bleus[-1][0]}" in result.stderr
    assert re.search(r"time to target BLEU 0\.3: \d+\.\d min of training .* \d\.\d{3}e\+\d+ FLOPs", result.stderr)
    assert load_checkpoint(run / "checkpoints/checkpoint_last.pt")["step"] == bleus[-1][0]


def test_init_from_fine_tunes_on_another_corpus_with_the_checkpoints_vocabulary(prepared, corpus, tmp_path):
    """Another corpus is encoded with the source run's sentencepiece model (data.spm_model), so that
    trainer.init_from accepts it; a vocabulary trained on that corpus instead is refused in one line."""
    source = fresh_run(prepared, tmp_path, "source")
    train(source, corpus, "trainer.max_steps=2")
    weights = source / "checkpoints/checkpoint_last.pt"
    other = write_sample(tmp_path / "other", seed=11, train_size=300, valid_size=20, test_size=20)

    tuned = tmp_path / "tuned"
    init = [f"trainer.init_from={weights}", "trainer.max_steps=2"]
    result = train(tuned, other, f"data.spm_model={source / 'data/spm.model'}", *init)
    assert f"initialised from {weights} (step 2 of its run)" in result.stderr
    assert load_checkpoint(tuned / "checkpoints/checkpoint_last.pt")["sentencepiece"] == (
        load_checkpoint(weights)["sentencepiece"]
    )

    own = tmp_path / "own_vocabulary"
    refused = run_cli("train", *files_overrides(other), *TINY_MODEL, *QUICK, f"output_dir={own}", *init)
    assert refused.returncode == 2 and "another sentencepiece vocabulary" in refused.stderr.strip().splitlines()[-1]
