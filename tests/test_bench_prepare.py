"""`bench prepare` at a tiny size: the synthetic corpus, the memory measurement, the real prepare in a
child process, the table and the JSON. Nothing here asserts a time."""

import json
import statistics
from pathlib import Path

from tests.helpers import run_cli
from transformer_mt.bench import common
from transformer_mt.bench.prepare import PrepareBenchConfig, load_pool, run_measured, write_corpus


def test_synthetic_corpus_has_distinct_lines_with_the_pools_lengths(tmp_path):
    pool, source = load_pool(str(tmp_path / "no_corpus_here"), tmp_path)  # falls back to the embedded sample
    assert "embedded_sample" in source and len(pool) > 1000
    written = write_corpus(pool, tmp_path / "corpus", train=3000, valid=100, seed=5)
    assert written["pairs"] == {"train": 3000, "valid": 100, "test": 100}
    for lang, side in (("en", 0), ("de", 1)):
        lines = (tmp_path / "corpus" / f"train.{lang}").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(set(lines)) == 3000  # distinct
        real = statistics.mean(len(pair[side].split()) for pair in pool)
        assert abs(statistics.mean(len(line.split()) for line in lines) - real) < 0.1 * real  # same lengths
        known = {word for pair in pool for word in pair[side].split()}
        assert {word for line in lines for word in line.split()} - known  # and new word types
    again = write_corpus(pool, tmp_path / "again", train=3000, valid=100, seed=5)
    assert again["bytes"] == written["bytes"]
    assert (tmp_path / "again" / "train.de").read_bytes() == (tmp_path / "corpus" / "train.de").read_bytes()


def test_peak_memory_counts_the_process_and_what_it_starts(tmp_path):
    grow = "b = bytearray(160 << 20); import time; time.sleep(1.5)"  # 160 MiB, touched
    alone = run_measured(["-c", grow], tmp_path / "a.log", sample_every_s=0.05, timeout_s=60)
    assert alone["returncode"] == 0 and alone["peak_rss_mib"] >= 160 and alone["peak_tree_rss_mib"] >= 160
    bare = run_measured(["-c", "pass"], tmp_path / "b.log", sample_every_s=0.05, timeout_s=60)
    assert bare["peak_rss_mib"] < 60  # not the benchmark's own size (a spawned child's ru_maxrss starts there)
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grow!r}], check=True)"
    tree = run_measured(["-c", parent], tmp_path / "c.log", sample_every_s=0.05, timeout_s=60)
    assert tree["returncode"] == 0 and tree["peak_rss_mib"] < 60  # the child alone: a bare Python
    assert tree["peak_tree_rss_mib"] >= 160  # the grandchild counted in the tree
    failed = run_measured(["-c", "import sys; sys.exit(3)"], tmp_path / "d.log", sample_every_s=0.05, timeout_s=60)
    assert failed["returncode"] == 3 and failed["peak_rss_mib"] > 0


def test_bad_options_are_refused():
    for option, message in (("pairs=[0]", "positive sizes"), ("pairz=[5]", "did you mean 'pairs'")):
        try:
            common.parse_options(PrepareBenchConfig, [option], "bench prepare")
        except ValueError as err:
            assert message in str(err)
        else:
            raise AssertionError(option)


def test_bench_prepare_runs_the_real_prepare_and_a_few_training_steps(tmp_path):
    output = tmp_path / "bench.json"
    result = run_cli(
        "bench", "prepare", "pairs=[200]", "valid_pairs=20", f"corpus={tmp_path / 'none'}", f"scratch={tmp_path / 's'}",
        "keep=true", "train_steps=1", "overrides=[data.workers=1]", f"output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read+clean s" in result.stdout and "peak RSS MiB" in result.stdout and "train RSS MiB" in result.stdout
    payload = json.loads(output.read_text())
    (row,) = payload["rows"]
    assert row["pairs"] == 200 and 0 < row["kept"] <= 200 and row["vocab_size"] > 4
    assert all(row[key] >= 0 for key in ("read_clean_s", "spm_train_s", "encode_spm_s", "encode_write_s"))
    assert row["peak_rss_mib"] > 0 and row["train_peak_rss_mib"] > 0 and row["pairs_per_s"] > 0
    assert payload["config"]["preset"] == "wmt14_en_de" and payload["environment"]["cpus"] >= 1
    manifest = json.loads(Path(tmp_path / "s" / "pairs_200" / "run" / "data" / "manifest.json").read_text())
    assert manifest["key"]["config"]["vocab_size"] == 37000 and manifest["key"]["config"]["max_len_ratio"] == 1.5
    assert (tmp_path / "s" / "pairs_200" / "run" / "checkpoints" / "checkpoint_last.pt").is_file()
