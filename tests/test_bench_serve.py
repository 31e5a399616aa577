"""`transformer-mt bench serve` (transformer_mt/bench/serve.py) at a tiny size: a real server
process, concurrent and sequential clients, every request answered and every line equal to
`translate` of that line alone. Its timings are not checked (a shared test machine says nothing)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SAMPLE_SENTENCES, run_cli, write_random_checkpoint

pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'transformer-mt[serve]'")
pytest.importorskip("starlette", reason="the serve extra is not installed")


def test_load_test_answers_every_request_as_translate_alone(tmp_path):
    checkpoint = write_random_checkpoint(tmp_path / "checkpoint.pt")
    source = tmp_path / "sentences.en"
    source.write_text("\n".join(SAMPLE_SENTENCES + ["A dog.", "The teacher sees the old man."]) + "\n")
    report = tmp_path / "serve.json"
    result = run_cli(
        "bench", "serve", f"checkpoint={checkpoint}", f"input={source}", "clients=3", "requests=4",
        "max_lines=3", "device=cpu", "beam=2", "lenpen=1.0", "batch_window_ms=20", f"output={report}",
        "timeout_s=300",
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    payload = json.loads(report.read_text())
    rows = {row["phase"]: row for row in payload["rows"]}
    assert set(rows) == {"concurrent", "sequential"}
    for row in rows.values():
        assert row["answered"] == row["requests"] == 12 and row["failed"] == 0 and not row["timed_out"]
        assert row["latency_p50_ms"] <= row["latency_p99_ms"]
    assert rows["concurrent"]["lines"] == rows["sequential"]["lines"]  # the same requests twice
    check = payload["check"]
    assert check["mismatches"] == 0 and check["lines_checked"] == 2 * rows["concurrent"]["lines"]
    assert payload["server"]["exit_status"] == 0  # stopped with SIGTERM, drained
    assert payload["model"]["decoding"]["max_len_b"] == 6  # the checkpoint's settings, beam/lenpen on top
    assert "vs seq" in result.stdout and "all equal" in result.stdout


def test_bad_options_are_refused_before_any_work():
    result = run_cli("bench", "serve", "clients=0")
    assert result.returncode == 2 and "checkpoint=PATH is required" in result.stderr
    assert "clients=0 must be between 1 and 1024" in result.stderr
