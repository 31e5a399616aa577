"""One process owns a run folder (transformer_mt/run_folder.py): a second `train` or `prepare` on the
same output_dir is refused with one line naming the holder, readers keep working, and `kill -9` of
the holder leaves no stale lock. The CLI tests run real `transformer-mt` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_MODEL, Background, files_overrides, run_cli
from tests.test_trainer import QUICK
from transformer_mt.run_folder import LOCK_FILE, RunFolderBusy, own_run_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_second_owner_is_refused_naming_the_first(tmp_path):
    with own_run_folder(tmp_path / "run", "train"):
        holder = rf"in use by another transformer-mt process \(pid {os.getpid()}, train\)"
        with pytest.raises(RunFolderBusy, match=holder):
            with own_run_folder(tmp_path / "run", "prepare"):
                pass
    with own_run_folder(tmp_path / "run", "prepare"):  # released at the end of the block
        pass
    with own_run_folder(tmp_path / "run", "train"), own_run_folder(tmp_path / "run", "train", take=False):
        pass  # torchrun's other ranks take nothing


def test_kill_9_of_the_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom transformer_mt.run_folder import own_run_folder\n"
         f"with own_run_folder({str(tmp_path)!r}, 'train'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            with own_run_folder(tmp_path, "train"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the file stays; the lock died with its process
    with own_run_folder(tmp_path, "train"):
        pass


# ----------------------------------------------------------------------------- the real commands


def train_args(run: Path, corpus: Path, *extra: str) -> list[str]:
    return [*files_overrides(corpus), *TINY_MODEL, *QUICK, "trainer.device=cpu", f"output_dir={run}", *extra]


def test_a_second_writer_is_refused_while_training_runs_and_readers_keep_working(corpus, tmp_path):
    run = tmp_path / "run"
    endless = train_args(
        run, corpus, "trainer.max_steps=100000", "trainer.save_every=4", "trainer.keep_last=0"
    )
    training = Background([sys.executable, "-m", "transformer_mt", "train", *endless])
    checkpoint = run / "checkpoints/checkpoint_4.pt"
    training.wait_for(checkpoint.exists)
    data = {p.name: p.read_bytes() for p in (run / "data").iterdir()}

    for cmd, extra in (("prepare", ["data.vocab_size=150"]), ("train", [])):
        result = run_cli(cmd, *train_args(run, corpus, *extra))
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip() == (
            f"transformer-mt {cmd}: error: output_dir {run} is in use by another transformer-mt process "
            f"(pid {training.process.pid}, train); wait for it to finish, stop it, or choose another output_dir"
        )
    assert {p.name: p.read_bytes() for p in (run / "data").iterdir()} == data  # nothing was rewritten

    # Readers do not take the folder: translate, evaluate and average work beside the trainer.
    translated = run_cli("translate", f"checkpoint={checkpoint}", "decoding.beam=1", stdin="a dog\n")
    assert translated.returncode == 0 and translated.stdout.count("\n") == 1, translated.stderr[-3000:]
    evaluated = run_cli("evaluate", f"checkpoint={checkpoint}", "decoding.beam=1", "decoding.max_len_b=5")
    assert evaluated.returncode == 0 and "BLEU" in evaluated.stdout, evaluated.stderr[-3000:]
    averaged = run_cli("average", f"checkpoints=[{checkpoint},{checkpoint}]", f"output={tmp_path / 'avg.pt'}")
    assert averaged.returncode == 0, averaged.stderr[-3000:]

    # kill -9 of the trainer frees the folder at once: the next train resumes.
    training.kill()
    result = run_cli("train", *train_args(run, corpus, "trainer.max_steps=6", "trainer.save_every=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun with gloo on CPU")
def test_under_torchrun_rank_0_owns_the_folder_and_a_second_job_fails_fast(corpus, tmp_path):
    """Only rank 0 takes the lock (a job's own ranks would otherwise refuse each other), and a second
    job on the same folder ends with rank 0's error instead of its other ranks waiting forever."""
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "transformer_mt", "train"]  # fmt: skip
    endless = train_args(
        run, corpus, "trainer.max_steps=100000", "trainer.save_every=2", "trainer.keep_last=0"
    )
    first = Background([*torchrun, *endless])
    first.wait_for((run / "checkpoints/checkpoint_2.pt").exists)
    started = time.monotonic()
    second = subprocess.run(
        [*torchrun, *train_args(run, corpus, "trainer.max_steps=3", "trainer.dist_timeout_s=600")],
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert second.returncode != 0
    assert "is in use by another transformer-mt process" in second.stderr, second.stderr[-3000:]
    assert time.monotonic() - started < 120  # not the 600 s collective timeout
    assert first.process.poll() is None  # the first job trains on
    first.kill()  # and stops with its workers, which torchrun started in sessions of their own
    assert not [pid for pid in Path("/proc").glob("[0-9]*") if str(run) in _cmdline(pid)]


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # ended meanwhile
        return ""
