"""scripts/gpu_check.sh where there is no GPU: it refuses in one line, and its CPU rehearsal (--cpu)
runs every stage of the GPU check at tiny sizes, so that its plumbing (the offline install, the
stage runner, torchrun, the process-group probe, the benchmarks' JSON, the summary) is tested here
and not first on a lent GPU. Real subprocesses of the real script; about 90 s on a 2-core CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
STAGES = ["setup", "pytest", "torchrun", "process_group", "bench_train_transformer_tiny", "bench_decode"]


def gpu_check(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("OUT", None)  # the device tool's variable: the OUT_DIR argument is the one used here
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the check would run")
def test_without_a_gpu_the_check_stops_at_once_with_one_line(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = gpu_check(str(out), env={"GPU_CHECK_WORK": str(work)}, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpu_check: no CUDA device: torch ") and "--cpu" in lines[0]
    assert torch.__version__ in lines[0]
    # what the machine is, and the same line in the log; no stage ran
    assert sorted(p.name for p in out.iterdir()) == ["environment.txt", "gpu_check.log"]
    assert (out / "gpu_check.log").read_text().splitlines() == lines
    assert not (work / "stages.tsv").exists() or (work / "stages.tsv").read_text() == ""


@pytest.mark.parametrize("args", [["--gpu"], ["a", "b"]])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args):
    result = gpu_check(*args, env={"GPU_CHECK_WORK": str(tmp_path / "work")}, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("gpu_check: ")


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_stage(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = gpu_check("--cpu", str(out), env={"GPU_CHECK_WORK": str(work)})
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:] + log[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["failed"] == []
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "ok" and s["exit"] == "0" for s in summary["stages"]), summary
    details = {s["stage"]: s["detail"] for s in summary["stages"]}
    assert details["setup"].startswith("imports: ok (hydra-core ")
    assert re.fullmatch(r"\d+ passed, 0 failed, \d+ skipped", details["pytest"]), details["pytest"]
    assert int(details["pytest"].split()[0]) >= 5  # the selected GPU tests really ran, on the CPU
    assert details["torchrun"].startswith("2 rank(s) on cpu, fp32; step 20 loss ")
    assert (
        details["process_group"].startswith("process group ok: backend gloo")
        and "DDP step" in details["process_group"]
    )
    assert "transformer-mt fp32" in details["bench_train_transformer_tiny"]
    assert "fp32 beam 1" in details["bench_decode"] and "fp32 beam 4" in details["bench_decode"]

    # What the device tool brings back: at most 8 files, plainly named, no folders.
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [
            "gpu_check.log",
            "environment.txt",
            "pytest.xml",
            "bench_train_transformer_tiny.json",
            "bench_decode.json",
            "summary.json",
        ]
    )
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files) and len(files) <= 8
    train = json.loads((out / "bench_train_transformer_tiny.json").read_text())
    assert {row["system"] for row in train["rows"]} == {"transformer-mt", "torch.nn.Transformer"}
    assert all(row["status"] == "ok" and row["tokens_per_second"] > 0 for row in train["rows"])
    decode = json.loads((out / "bench_decode.json").read_text())
    assert sorted(row["beam"] for row in decode["rows"]) == [1, 4]
    assert all(row["status"] == "ok" and row["tokens_per_second"] > 0 for row in decode["rows"])

    # The last lines printed: one per stage, then the verdict.
    tail = result.stdout.splitlines()[-len(STAGES) - 1 :]
    assert [line.split()[1] for line in tail[:-1]] == STAGES
    assert tail[-1].startswith("gpu_check: ") and "every stage passed" in tail[-1]
    # The project was installed into the scratch folder (built from a copy of its sources there).
    assert (work / "site" / "transformer_mt" / "__init__.py").is_file()
    assert (work / "site" / "bin" / "transformer-mt").is_file()


def test_a_rerun_runs_only_the_selected_stages(tmp_path):
    """GPU_CHECK_STAGES: setup (which the others need) and the named stages; the rest are reported as
    not selected, which is no failure."""
    out = tmp_path / "out"
    env = {"GPU_CHECK_WORK": str(tmp_path / "work"), "GPU_CHECK_STAGES": "process_group"}
    result = gpu_check("--cpu", str(out), env=env, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stages = {s["stage"]: s["status"] for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert stages == {name: "ok" if name in ("setup", "process_group") else "not_selected" for name in STAGES}
    assert (
        result.stdout.splitlines()[-1].startswith("gpu_check: ")
        and "every selected stage passed" in result.stdout
    )


def test_stages_past_the_budget_are_skipped_and_fail_the_check(tmp_path):
    out = tmp_path / "out"
    env = {"GPU_CHECK_WORK": str(tmp_path / "work"), "GPU_CHECK_BUDGET_S": "5"}
    result = gpu_check("--cpu", str(out), env=env, timeout=120)
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"] and summary["failed"] == STAGES
    assert all(s["status"] == "skipped" for s in summary["stages"])
    assert f"{len(STAGES)} stage(s) did not pass" in result.stdout.splitlines()[-1]
