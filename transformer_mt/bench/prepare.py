"""`transformer-mt bench prepare`: what `prepare` costs as the corpus grows: time per stage, pairs/s, peak memory.

For each size N in `pairs`, a synthetic parallel corpus of N training pairs (and `valid_pairs` each
for valid and test) is written into a scratch folder, and the real `transformer-mt prepare` runs on
it in a child process with a data preset's settings (default `wmt14_en_de`: 37k joint BPE, cleaning
as fairseq's WMT14 recipe), reading local files instead of the hub. Reported per N:

- wall time per stage, from the manifest `prepare` writes: hashing and the alignment check, reading
  and cleaning train (with the reservoir sample for sentencepiece), sentencepiece training, and of the
  encoding pass its sentencepiece time, its writing time and its wait for text; the process's whole
  wall time (Python start and imports included) and pairs/s over it;
- peak memory: the child's peak resident set (VmHWM, read by the child as it exits: the whole
  process, its sentencepiece and encoding threads included) and the peak of the summed RSS of the
  child and any process it starts, sampled from /proc every `sample_every_s` (Linux only);
- with `train_steps=K`, the same of `transformer-mt train` for K steps of a tiny model on the CPU over
  the prepared data: what a rank holds at the start of training on a corpus of N pairs.

The corpus: distinct lines with a real corpus's length distribution and a long tail of word types,
recombined from real sentence pairs (`corpus` folder: the WMT14 En-De training sample and Multi30k's
train; the embedded sample of data/sample.py when neither is there). Each synthetic pair is a real
pair with about one word in eight per side replaced, by a word of the same side (drawn by frequency)
or a new word made of the start of one and the end of another, and is kept only if neither of its
lines was written before. It lives only in the scratch folder, never in the repository. The issue's
targets are reported, never asserted: 4.5M pairs in at most 10 minutes on 2 cores, peak RSS at most 3 GB.
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch

from transformer_mt.bench import common
from transformer_mt.data.corpus import read_lines
from transformer_mt.data.sample import write_sample
from transformer_mt.data.sources import DATA_ROOT_ENV

POOLS = ("wmt14_en_de_train_sample/train", "multi30k/train")  # under `corpus`, as PREFIX.{en,de}
# The Moses escapes of the WMT14 sample, undone so that the lines read as raw text.
_UNESCAPE = (("&apos;", "'"), ("&quot;", '"'), ("&lt;", "<"), ("&gt;", ">"), ("&#91;", "["), ("&#93;", "]"),
             ("&#124;", "|"), ("&amp;", "&"))
TARGETS = {"max_seconds_4.5M": 600, "max_peak_rss_gb": 3.0}


@dataclass
class PrepareBenchConfig:
    """Options of `bench prepare` (key=value on the command line)."""

    pairs: List[int] = field(default_factory=lambda: [500_000, 1_000_000, 2_000_000, 4_500_000])
    preset: str = "wmt14_en_de"  # the data preset (configs/data/) whose vocabulary and cleaning settings are used
    overrides: List[str] = field(default_factory=list)  # more data.KEY=VALUE for prepare, e.g. [data.workers=2]
    # Real pairs to recombine: a folder holding wmt14_en_de_train_sample/ and multi30k/ (default: the
    # data root, $TRANSFORMER_MT_DATA or ../shared/data); the embedded sample when neither is there.
    corpus: Optional[str] = None
    valid_pairs: int = 3000  # pairs of valid and of test (newstest2013 has 3000)
    scratch: Optional[str] = None  # folder for the corpora and prepared data (default: a temporary one)
    keep: bool = False  # keep the scratch folder's corpora and prepared data
    train_steps: int = 0  # > 0: also train a tiny model that many steps on each and report its memory
    sample_every_s: float = 0.2  # how often the process tree's RSS is sampled
    timeout_s: float = 7200.0  # per child process
    seed: int = 1
    output: Optional[str] = None  # write the results here as JSON

    def __post_init__(self) -> None:
        if not self.pairs or min(self.pairs) < 1 or self.valid_pairs < 1:
            raise ValueError("bench prepare: pairs must be a non-empty list of positive sizes, valid_pairs >= 1")
        if self.train_steps < 0 or self.sample_every_s <= 0:
            raise ValueError("bench prepare: train_steps must be >= 0 and sample_every_s > 0")


# ----------------------------------------------------------------------------- the corpus


def load_pool(corpus: str | None, scratch: Path) -> tuple[list[tuple[str, str]], str]:
    """Real (English, German) pairs to recombine, and where they came from."""
    root = Path(corpus or os.environ.get(DATA_ROOT_ENV) or "../shared/data").expanduser()
    prefixes = [root / name for name in POOLS if all(Path(f"{root / name}.{lang}").is_file() for lang in ("en", "de"))]
    if not prefixes:
        prefixes = [write_sample(scratch / "embedded_sample", seed=1) / "train"]
    pool = []
    for prefix in prefixes:
        for en, de in zip(read_lines(f"{prefix}.en"), read_lines(f"{prefix}.de"), strict=True):
            if en and de:
                pool.append((_unescape(en), _unescape(de)))
    return pool, ", ".join(str(p) for p in prefixes)


def _unescape(line: str) -> str:
    for escaped, raw in _UNESCAPE:
        line = line.replace(escaped, raw)
    return line


class _Recombiner:
    """Distinct synthetic pairs from a pool of real ones (see the module docstring)."""

    def __init__(self, pool: list[tuple[str, str]], seed: int) -> None:
        self.pool = [(src.split(), tgt.split()) for src, tgt in pool]
        self.words = [[w for pair in self.pool for w in pair[side]] for side in (0, 1)]  # by frequency
        self.rng = random.Random(seed)
        self.seen: set[int] = set()
        self.rejected = 0

    def pair(self) -> tuple[str, str]:
        while True:
            src, tgt = self.pool[self.rng.randrange(len(self.pool))]
            lines = (self._vary(src, 0), self._vary(tgt, 1))
            keys = [hash(line) for line in lines]
            if keys[0] not in self.seen and keys[1] not in self.seen:
                self.seen.update(keys)
                return lines
            self.rejected += 1

    def _vary(self, words: list[str], side: int) -> str:
        words, rng, vocab = list(words), self.rng, self.words[side]
        for _ in range(1 + len(words) // 8):
            if rng.random() < 0.5:
                word = vocab[rng.randrange(len(vocab))]
            else:  # a new word: the start of one and the end of another
                a, b = vocab[rng.randrange(len(vocab))], vocab[rng.randrange(len(vocab))]
                word = a[: rng.randint(1, len(a))] + b[rng.randint(0, len(b) - 1) :]
            words[rng.randrange(len(words))] = word
        return " ".join(words)


def write_corpus(pool: list[tuple[str, str]], folder: Path, *, train: int, valid: int, seed: int) -> dict[str, Any]:
    """PREFIX.en/.de for train, valid and test in `folder`; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sizes = {"train": train, "valid": valid, "test": valid}
    recombiner = _Recombiner(pool, seed)
    for split, n in sizes.items():
        with open(folder / f"{split}.en", "w", encoding="utf-8") as en, open(folder / f"{split}.de", "w", encoding="utf-8") as de:
            for _ in range(n):
                src, tgt = recombiner.pair()
                en.write(src + "\n")
                de.write(tgt + "\n")
    written = {
        "prefix": str(folder),
        "pairs": sizes,
        "bytes": sum((folder / f"{s}.{lang}").stat().st_size for s in sizes for lang in ("en", "de")),
        "rejected_duplicates": recombiner.rejected,
        "seconds": time.perf_counter() - start,
    }
    return written


# ----------------------------------------------------------------------------- running and measuring


# Runs a Python module (-m) or code (-c) and writes, at exit, the peak resident set of its own memory
# (VmHWM, threads included). Not wait4's ru_maxrss: Linux starts a child's maxrss at its parent's
# resident set when it is spawned, here the size of the benchmark process itself.
_PEAK_WRAPPER = """
import atexit, runpy, sys
peak_path, kind, target = sys.argv[1:4]
def report():
    with open("/proc/self/status") as status:
        kib = next((line.split()[1] for line in status if line.startswith("VmHWM:")), "")
    with open(peak_path, "w") as out:
        out.write(kib)
atexit.register(report)
sys.argv = [target, *sys.argv[4:]]
if kind == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def run_measured(python_args: list[str], log_path: Path, *, sample_every_s: float, timeout_s: float) -> dict[str, Any]:
    """Run `python -m MODULE ...` or `python -c CODE ...` (`python_args` without the interpreter), its
    output to `log_path`: its wall time, exit code, the peak resident set of the process (threads
    included) and the sampled peak of the summed RSS of the process and its descendants."""
    if not Path("/proc/self/status").is_file():
        raise OSError("bench prepare measures memory through /proc: Linux only")
    peak_path = log_path.with_suffix(".peak")
    command = [sys.executable, "-c", _PEAK_WRAPPER, str(peak_path), *python_args]
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        peak_tree, done = [0], threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, sample_every_s, done, peak_tree), daemon=True)
        sampler.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    peak = peak_path.read_text().strip() if peak_path.is_file() else ""
    return {
        "seconds": seconds,
        "returncode": proc.returncode,
        "peak_rss_mib": int(peak) / 1024 if peak else None,
        "peak_tree_rss_mib": peak_tree[0] / 1024,
    }


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _sample_tree(pid: int, every_s: float, done: threading.Event, peak: list[int]) -> None:
    while not done.wait(every_s):
        peak[0] = max(peak[0], sum(_rss_kib(p) for p in _tree(pid)))


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _data_args(cfg: PrepareBenchConfig, prefix: Path) -> list[str]:
    return [
        f"data={cfg.preset}",
        "data.source=files",
        f"data.train={prefix}/train",
        f"data.valid={prefix}/valid",
        f"data.test={prefix}/test",
        *cfg.overrides,
    ]


def measure_size(cfg: PrepareBenchConfig, pool: list[tuple[str, str]], scratch: Path, n: int) -> dict[str, Any]:
    """Write the corpus of `n` pairs, prepare it (and train on it), and measure."""
    folder = scratch / f"pairs_{n}"
    corpus = write_corpus(pool, folder / "corpus", train=n, valid=cfg.valid_pairs, seed=cfg.seed + n)
    run_dir = folder / "run"
    command = ["-m", "transformer_mt", "prepare", *_data_args(cfg, folder / "corpus"), f"output_dir={run_dir}"]
    prepared = run_measured(command, folder / "prepare.log", sample_every_s=cfg.sample_every_s, timeout_s=cfg.timeout_s)
    if prepared["returncode"] != 0:
        tail = (folder / "prepare.log").read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"bench prepare: prepare of {n} pairs exited {prepared['returncode']}:\n{tail}")
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text(encoding="utf-8"))
    seconds = manifest["seconds"]
    row: dict[str, Any] = {
        "pairs": n,
        "kept": manifest["cleaning"]["kept"],
        "corpus_mib": corpus["bytes"] / 2**20,
        "corpus_seconds": corpus["seconds"],
        "hash_check_s": seconds["hash"] + seconds["check"],
        "read_clean_s": seconds["clean"],
        "spm_train_s": seconds["vocab"],
        "encode_s": seconds["encode"],
        "encode_spm_s": seconds["encode_sentencepiece"],
        "encode_write_s": seconds["encode_write"],
        "encode_wait_text_s": seconds["encode_read"],
        "prepare_s": seconds["total"],
        "process_s": prepared["seconds"],
        "pairs_per_s": n / prepared["seconds"],
        "peak_rss_mib": prepared["peak_rss_mib"],
        "peak_tree_rss_mib": prepared["peak_tree_rss_mib"],
        "vocab_size": manifest["vocab_size"],
        "train_tokens": manifest["splits"]["train"]["src_tokens"] + manifest["splits"]["train"]["tgt_tokens"],
        "manifest_seconds": seconds,
    }
    if cfg.train_steps:
        command = ["-m", "transformer_mt", "train", *_data_args(cfg, folder / "corpus"),
                   "model=transformer_tiny", f"trainer.max_steps={cfg.train_steps}", "trainer.valid_bleu=false",
                   "trainer.device=cpu", "trainer.log_every=1", f"output_dir={run_dir}"]
        trained = run_measured(command, folder / "train.log", sample_every_s=cfg.sample_every_s, timeout_s=cfg.timeout_s)
        if trained["returncode"] != 0:
            tail = (folder / "train.log").read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"bench prepare: train on {n} pairs exited {trained['returncode']}:\n{tail}")
        row.update(train_s=trained["seconds"], train_peak_rss_mib=trained["peak_rss_mib"],
                   train_peak_tree_rss_mib=trained["peak_tree_rss_mib"])
    if not cfg.keep:
        shutil.rmtree(folder)
    return row


def run(cfg: PrepareBenchConfig) -> dict[str, Any]:
    made = cfg.scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-") if made else cfg.scratch).expanduser()
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        pool, source = load_pool(cfg.corpus, scratch)
        print(f"bench prepare: {len(pool)} real pairs to recombine, from {source}", file=sys.stderr)
        rows = []
        for n in cfg.pairs:
            rows.append(measure_size(cfg, pool, scratch, n))
            print(table({"rows": rows[-1:], "config": asdict(cfg)}), file=sys.stderr)
    finally:
        if made and not cfg.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "benchmark": "prepare",
        "environment": {**common.environment(torch.device("cpu")), "cpus": os.cpu_count(),
                        "memory_gib": _memory_gib()},
        "config": asdict(cfg),
        "pool": {"pairs": len(pool), "source": source},
        "targets": TARGETS,
        "rows": rows,
    }


def _memory_gib() -> float | None:
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return kib / 2**20


COLUMNS = [
    ("pairs", "pairs"),
    ("read_clean_s", "read+clean s"),
    ("spm_train_s", "spm train s"),
    ("encode_spm_s", "encoding s"),
    ("encode_write_s", "writing s"),
    ("encode_s", "encode pass s"),
    ("prepare_s", "prepare s"),
    ("process_s", "process s"),
    ("pairs_per_s", "pairs/s"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("peak_tree_rss_mib", "tree RSS MiB"),
]
TRAIN_COLUMNS = [("train_s", "train s"), ("train_peak_rss_mib", "train RSS MiB")]


def table(payload: dict[str, Any]) -> str:
    columns = COLUMNS + (TRAIN_COLUMNS if payload["config"]["train_steps"] else [])
    return common.format_table(payload["rows"], columns)


def main(overrides: list[str], show_help: bool) -> int | None:
    if show_help:
        print(common.options_help(PrepareBenchConfig, "bench prepare", __doc__ or ""))
        return None
    cfg = common.parse_options(PrepareBenchConfig, overrides, "bench prepare")
    payload = run(cfg)
    print(table(payload))
    if cfg.output:
        print(f"wrote {common.write_json(cfg.output, payload)}", file=sys.stderr)
    return 0


__all__ = ["PrepareBenchConfig", "load_pool", "write_corpus", "run_measured", "run", "table", "main"]
