"""Distributed training as real clusters run it: 2 gloo ranks under `torchrun --standalone`.

Each test launches the real `transformer-mt train` through torchrun, with a fault injected where a
cluster would cause it (a rank that sees another filesystem, a long prepare on rank 0), and checks
what the run does: resume on another world size, agreement on the checkpoint, patience with a
long prepare, fine-tuning from another run's weights, one collective and one host sync per update.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY_MODEL, files_overrides, run_cli
from tests.test_trainer import QUICK, fresh_run, losses, params
from transformer_mt import checkpoint as ckpt

# The real CLI under torchrun, with faults injected from the environment:
#   RANK1_OUTPUT_DIR  rank 1 reads and writes this output_dir instead (a node without a shared filesystem)
#   SLOW_PREPARE_S    rank 0 spends this long before preparing the data (a large corpus)
#   COUNT_DIR         count the collectives and host syncs of each update into COUNT_DIR/rank<R>.json
CLUSTER_CLI = """
import json, os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
rank, argv = int(os.environ["RANK"]), sys.argv[1:]
if rank == 1 and os.environ.get("RANK1_OUTPUT_DIR"):
    argv = [a if not a.startswith("output_dir=") else "output_dir=" + os.environ["RANK1_OUTPUT_DIR"] for a in argv]
if os.environ.get("SLOW_PREPARE_S"):
    import transformer_mt.training.data as data
    real = data.prepare_data
    def slow(*args, **kwargs):
        time.sleep(float(os.environ["SLOW_PREPARE_S"]))
        return real(*args, **kwargs)
    data.prepare_data = slow
if os.environ.get("COUNT_DIR"):
    import transformer_mt.training.trainer as trainer
    counts, per_update = {"all_reduce": 0, "item": 0, "tolist": 0}, []
    def ours():  # a call made by transformer-mt's own code (not torch's optimiser, say)
        return sys._getframe(2).f_globals.get("__name__", "").startswith("transformer_mt")
    real_all_reduce, real_item, real_tolist = dist.all_reduce, torch.Tensor.item, torch.Tensor.tolist
    def all_reduce(*args, **kwargs):
        counts["all_reduce"] += 1
        return real_all_reduce(*args, **kwargs)
    def item(self):
        counts["item"] += ours()
        return real_item(self)
    def tolist(self):
        counts["tolist"] += ours()
        return real_tolist(self)
    dist.all_reduce, torch.Tensor.item, torch.Tensor.tolist = all_reduce, item, tolist
    real_step = trainer.train_step
    def counted_step(run, batches):
        before = dict(counts)
        result = real_step(run, batches)
        per_update.append({k: counts[k] - before[k] for k in counts})
        Path(os.environ["COUNT_DIR"], f"rank{rank}.json").write_text(json.dumps(per_update))
        return result
    trainer.train_step = counted_step
from transformer_mt.cli import main
main(["train", *argv])
"""

SINGLE = ["trainer.device=cpu", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def cluster_cli(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("cli") / "cluster_cli.py"
    script.write_text(CLUSTER_CLI)
    return script


def args(run: Path, corpus: Path, *extra: str) -> list[str]:
    return [*files_overrides(corpus), *TINY_MODEL, *QUICK, *SINGLE, f"output_dir={run}", *extra]


def train(run: Path, corpus: Path, *extra: str) -> subprocess.CompletedProcess:
    result = run_cli("train", *args(run, corpus, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def torchrun(script: Path, run: Path, corpus: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`transformer-mt train` on 2 gloo ranks (through CLUSTER_CLI)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    return subprocess.run(
        [*command, *args(run, corpus, *extra)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def test_resume_on_another_world_size_and_update_freq_ends_bit_identical(prepared, corpus, cluster_cli, tmp_path):
    """2 ranks x update_freq=1 for 3 updates, resumed as 1 rank x update_freq=2 for 3 more, ends with
    the parameters of an uninterrupted 1 x 2 run, bit for bit: the global batches are the same, and
    summing two ranks' gradients (DDP) and two micro-batches' (accumulation) adds the same two numbers.
    Dropout is off: its RNG streams cannot carry over from 2 ranks to 1, and the log says so."""
    straight = fresh_run(prepared, tmp_path, "straight")
    train(straight, corpus, "trainer.max_steps=6", "trainer.update_freq=2", "trainer.save_every=3")

    moved = fresh_run(prepared, tmp_path, "moved")
    result = torchrun(cluster_cli, moved, corpus, "trainer.max_steps=3", "trainer.update_freq=1", "trainer.save_every=3")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = ckpt.load_checkpoint(moved / "checkpoints/checkpoint_3.pt")
    assert saved["sampler"]["batches_done"] == 2 * 3 and len(saved["rng"]) == 2  # global: 6 batches taken
    resumed = train(moved, corpus, "trainer.max_steps=6", "trainer.update_freq=2", "trainer.save_every=3")
    assert "the checkpoint holds the RNG streams of 2 rank(s) and this run has 1" in resumed.stderr

    assert losses(moved) == losses(straight) and sorted(losses(moved)) == list(range(1, 7))
    a, b = params(straight / "checkpoints/checkpoint_last.pt"), params(moved / "checkpoints/checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # A checkpoint written before positions were global holds rank 0's own count: read as rank 0's x 2.
    old = fresh_run(prepared, tmp_path, "old")
    (old / "checkpoints").mkdir()
    saved["sampler"] = {"epoch": saved["sampler"]["epoch"], "position": saved["sampler"]["batches_done"] // 2}
    ckpt.save_checkpoint(saved, old / "checkpoints/checkpoint_last.pt")
    train(old, corpus, "trainer.max_steps=6", "trainer.update_freq=2", "trainer.save_every=3")
    c = params(old / "checkpoints/checkpoint_last.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_a_rank_that_cannot_read_rank_0s_checkpoint_fails_the_job_naming_it(
    prepared, corpus, cluster_cli, tmp_path
):
    """Two nodes without a shared filesystem: rank 1 sees its own copy of the run folder."""
    run = fresh_run(prepared, tmp_path, "node0")
    train(run, corpus, "trainer.max_steps=8", "trainer.save_every=4", "trainer.keep_last=3")
    node1 = fresh_run(prepared, tmp_path, "node1")  # the data, but no checkpoint
    more = ["trainer.max_steps=12", "trainer.dist_timeout_s=30"]

    result = torchrun(cluster_cli, run, corpus, *more, env={"RANK1_OUTPUT_DIR": str(node1)})
    assert result.returncode != 0
    expected = f"rank 1 cannot read {node1 / 'checkpoints/checkpoint_last.pt'}, the checkpoint rank 0 resumes from (step 8"
    assert expected in result.stderr and "without a shared filesystem" in result.stderr, result.stderr[-3000:]

    (node1 / "checkpoints").mkdir()  # an older copy: the same name, another step
    shutil.copy(run / "checkpoints/checkpoint_4.pt", node1 / "checkpoints/checkpoint_last.pt")
    result = torchrun(cluster_cli, run, corpus, *more, env={"RANK1_OUTPUT_DIR": str(node1)})
    assert result.returncode != 0
    assert "it holds step 4" in result.stderr, result.stderr[-3000:]
    assert ckpt.load_checkpoint(run / "checkpoints/checkpoint_last.pt")["step"] == 8  # nothing trained on


def test_a_rank_without_rank_0s_prepared_data_fails_the_job_naming_its_folder(corpus, cluster_cli, tmp_path):
    """Two nodes without a shared filesystem, before any checkpoint: rank 1's run folder is empty."""
    node1 = tmp_path / "node1"
    node1.mkdir()
    result = torchrun(
        cluster_cli, tmp_path / "node0", corpus, "trainer.max_steps=2", "trainer.dist_timeout_s=30",
        env={"RANK1_OUTPUT_DIR": str(node1)},
    )
    assert result.returncode != 0
    assert f"rank 1: {node1 / 'data'}: no prepared data" in result.stderr, result.stderr[-3000:]
    hint = f"copy rank 0's {node1 / 'data'} to the same path on every node (or run the same `transformer-mt prepare` there)"
    assert hint in result.stderr, result.stderr[-3000:]


def test_a_long_prepare_on_rank_0_does_not_time_out_the_other_ranks(corpus, cluster_cli, tmp_path):
    """Rank 0 prepares for longer than the collective timeout; rank 1 waits for it, and says so."""
    run = tmp_path / "run"
    result = torchrun(
        cluster_cli, run, corpus, "trainer.max_steps=2", "trainer.dist_timeout_s=4", env={"SLOW_PREPARE_S": "10"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"rank 1: waiting for rank 0 to prepare the data in {run / 'data'}" in result.stderr
    assert ckpt.load_checkpoint(run / "checkpoints/checkpoint_last.pt")["step"] == 2


def test_init_from_starts_a_new_run_from_another_runs_weights(prepared, corpus, cluster_cli, tmp_path):
    source = fresh_run(prepared, tmp_path, "source")
    train(source, corpus, "trainer.max_steps=30", "trainer.save_every=30", "trainer.valid_every=30")
    weights = source / "checkpoints/checkpoint_30.pt"
    fresh = fresh_run(prepared, tmp_path, "fresh")
    train(fresh, corpus, "trainer.max_steps=2")

    tuned = fresh_run(prepared, tmp_path, "tuned")
    init = [f"trainer.init_from={weights}", "trainer.max_steps=2"]
    result = torchrun(cluster_cli, tuned, corpus, *init)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialised from {weights} (step 30 of its run)" in result.stderr
    assert float(losses(tuned)[1]) < float(losses(fresh)[1]) - 0.5  # it starts from trained weights
    rates = [re.findall(r"\| lr (\S+)", (r / "train.log").read_text()) for r in (tuned, fresh)]
    assert rates[0] == rates[1] and len(rates[0]) == 2  # a fresh schedule
    saved = ckpt.load_checkpoint(tuned / "checkpoints/checkpoint_last.pt")
    assert saved["step"] == 2 and saved["sampler"]["batches_done"] == 2 * 2
    assert {int(s["step"]) for s in saved["optimizer"]["state"].values()} == {2}  # a fresh optimiser

    # Resume semantics stay: the same command again resumes the new run, not its starting point.
    result = torchrun(cluster_cli, tuned, corpus, *init[:1], "trainer.max_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "initialised from" not in result.stderr

    other = fresh_run(prepared, tmp_path, "other_vocabulary")
    state = ckpt.load_checkpoint(weights)
    state["sentencepiece"] = b"another model"
    ckpt.save_checkpoint(state, tmp_path / "other.pt")
    result = run_cli("train", *args(other, corpus, f"trainer.init_from={tmp_path / 'other.pt'}"))
    assert result.returncode == 2 and "another sentencepiece vocabulary" in result.stderr.strip().splitlines()[-1]


def test_each_update_makes_one_all_reduce_and_one_host_sync(prepared, corpus, cluster_cli, tmp_path):
    """The update's scalars (loss, nll, tokens, the stop vote, the minutes) travel together, and
    transformer-mt's code copies to the host once per update (`.item()` only where a value is logged)."""
    run = fresh_run(prepared, tmp_path, "run")
    counts = tmp_path / "counts"
    counts.mkdir()
    extra = ["trainer.max_steps=4", "trainer.max_minutes=60", "trainer.log_every=100"]
    result = torchrun(cluster_cli, run, corpus, *extra, env={"COUNT_DIR": str(counts)})
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        per_update = json.loads((counts / f"rank{rank}.json").read_text())
        assert per_update == [{"all_reduce": 1, "item": 0, "tolist": 1}] * 4, per_update
