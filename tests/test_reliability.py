"""Fault injection: training survives kills, signals, non-finite numbers, a full disk, bad checkpoints,
bad corpora, hostile input and a dead rank, and loses nothing. docs/reliability.md is the table of
the faults injected here, what the code does about each, and which test checks it.

Training runs are real `transformer-mt train` subprocesses of a tiny model on the small sample
corpus; "the same parameters" means bit-for-bit equal to one uninterrupted run (`straight`).
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from filelock import FileLock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import TINY_MODEL, Background, files_overrides, run_cli, write_small_corpus
from tests.test_trainer import QUICK, fresh_run, losses, params
from transformer_mt import checkpoint as ckpt
from transformer_mt.cli import main as cli_main
from transformer_mt.data.corpus import CleaningStats, CorpusError, TextCorpus, clean_pairs, normalise
from transformer_mt.data.vocab import train_vocabulary
from transformer_mt.training.signals import REPEAT_WINDOW_S

STEPS = 16
RUN = [*TINY_MODEL, *QUICK, "trainer.save_every=4", "trainer.valid_every=4", "trainer.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# The real CLI, with os.replace wrapped: once the file PAUSE exists, the next checkpoint rename (the
# temporary file is then written in full and fsync'ed) writes PAUSE.inside and sleeps, so a test can
# send signals or kill -9 inside a checkpoint write.
PAUSING_CLI = """
import os, sys, time
from pathlib import Path
pause = Path(sys.argv[1])
real_replace = os.replace
def replace(src, dst, **kwargs):
    if Path(src).name.startswith(".checkpoint_") and pause.exists():
        pause.with_suffix(".inside").write_text(str(dst))
        time.sleep(600)
    return real_replace(src, dst, **kwargs)
os.replace = replace
from transformer_mt.cli import main
main(sys.argv[2:])
"""


# ----------------------------------------------------------------------------- runs and helpers


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The corpus and one uninterrupted run of STEPS steps (which prepares the data): the reference for
    "the same parameters", and the model that the `translate` tests use. Built once per session and
    shared by pytest-xdist's workers (a lock in their common temporary folder)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "reliability"
    with FileLock(str(root / "reliability.lock")):
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            corpus = write_small_corpus(folder / "corpus")
            result = run_cli("train", *train_args(folder / "straight", corpus))
            assert result.returncode == 0, result.stderr[-3000:]
            spm = (folder / "straight/data/spm.model").read_bytes()
            assert (
                ckpt.load_checkpoint(folder / "straight/checkpoints/checkpoint_8.pt")["sentencepiece"] == spm
            )
            (folder / "done").touch()
    return folder / "corpus", folder / "straight"


@pytest.fixture(scope="module")
def corpus(reference) -> Path:
    return reference[0]


@pytest.fixture(scope="module")
def straight(reference) -> Path:
    return reference[1]


def train_args(run: Path, corpus: Path, *extra: str) -> list[str]:
    return [*files_overrides(corpus), *RUN, f"trainer.max_steps={STEPS}", f"output_dir={run}", *extra]


def start(run: Path, corpus: Path, *extra: str, pause: Path | None = None) -> Background:
    """`transformer-mt train` in the background (through PAUSING_CLI when `pause` is given)."""
    prefix = ["-c", PAUSING_CLI, str(pause), "train"] if pause else ["-m", "transformer_mt", "train"]
    return Background([sys.executable, *prefix, *train_args(run, corpus, *extra)])


def last_logged_step(run: Path) -> int:
    steps = losses(run) if (run / "train.log").exists() else {}
    return max(steps, default=0)


def assert_only_complete_checkpoints(run: Path) -> None:
    """Every file under a final checkpoint name loads; anything else is a temporary file."""
    for path in (run / "checkpoints").iterdir():
        if path.name.endswith(".pt") and not path.name.startswith("."):
            ckpt.load_checkpoint(path)  # raises on a partial file
        else:
            assert ckpt.PARTIAL_FILE.match(path.name), path


def assert_same_parameters(a: Path, b: Path) -> None:
    pa, pb = params(a / "checkpoints/checkpoint_last.pt"), params(b / "checkpoints/checkpoint_last.pt")
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def step_of(path: Path) -> int:
    return ckpt.load_checkpoint(path)["step"]


def cli_error(capsys, argv: list[str], *, one_line: bool = False) -> str:
    """Run the CLI in this process: it must exit 2 without a traceback, its error the last line on
    stderr (with `one_line`, the only line). Returns that line."""
    with pytest.raises(SystemExit) as exited:
        cli_main(argv)
    out, err = capsys.readouterr()
    err = err.strip()
    assert exited.value.code == 2 and "Traceback" not in err, f"{out}\n{err}"
    assert len(err.splitlines()) == 1 or not one_line, err
    return err.splitlines()[-1]


# ----------------------------------------------------------------------------- signals and kills


def test_sigterm_finishes_the_step_saves_and_resumes_bit_exact(straight, corpus, tmp_path):
    run = fresh_run(straight, tmp_path, "run")
    training = start(run, corpus)
    training.wait_for(lambda: last_logged_step(run) >= 5)
    training.process.send_signal(signal.SIGTERM)
    time.sleep(
        0.2
    )  # a repeat within REPEAT_WINDOW_S (torchrun forwarding what the group got) is the same request
    training.process.send_signal(signal.SIGTERM)
    assert training.finish() == 128 + signal.SIGTERM, training.stderr()[-3000:]
    stopped_at = last_logged_step(run)
    assert 5 <= stopped_at < STEPS
    assert step_of(run / "checkpoints/checkpoint_last.pt") == stopped_at  # the step was finished and saved
    assert "stopped: SIGTERM received" in (run / "train.log").read_text()
    assert_only_complete_checkpoints(run)

    result = run_cli("train", *train_args(run, corpus))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints/checkpoint_last.pt'} at step {stopped_at}" in result.stderr
    assert losses(run) == losses(straight)
    assert_same_parameters(run, straight)


def test_second_signal_exits_at_once_even_inside_a_checkpoint_write(straight, corpus, tmp_path):
    run = fresh_run(straight, tmp_path, "run")
    pause = tmp_path / "pause"
    training = start(run, corpus, pause=pause)
    training.wait_for(lambda: last_logged_step(run) >= 5)  # checkpoint_last.pt is step 4
    pause.touch()
    training.process.send_signal(signal.SIGINT)  # the trainer finishes the step and starts saving: paused
    first = time.monotonic()
    training.wait_for(pause.with_suffix(".inside").exists)
    time.sleep(max(0.0, first + REPEAT_WINDOW_S + 0.5 - time.monotonic()))
    training.process.send_signal(signal.SIGINT)
    assert training.finish(timeout=30) == -signal.SIGINT  # SIGINT's default action: killed, no clean-up
    assert step_of(run / "checkpoints/checkpoint_last.pt") == 4
    assert_only_complete_checkpoints(run)


def test_kill_9_at_random_moments_and_inside_a_checkpoint_write(straight, corpus, tmp_path):
    """The resumed run ends with the same parameters as the uninterrupted one, and no file under a
    final checkpoint name is ever partial (the write goes to a temporary file, then is renamed)."""
    rng = random.Random(7)
    run = fresh_run(straight, tmp_path, "run")

    # 1. kill -9 at a random moment of a random step
    training = start(run, corpus)
    target = rng.randint(2, 6)
    training.wait_for(lambda: last_logged_step(run) >= target)
    time.sleep(rng.uniform(0.0, 0.2))
    training.process.kill()
    assert training.finish() == -signal.SIGKILL
    assert_only_complete_checkpoints(run)

    # 2. kill -9 in the middle of a checkpoint write: the file is written in full, not yet renamed
    pause = tmp_path / "pause"
    training = start(run, corpus, pause=pause)
    before = last_logged_step(run)
    training.wait_for(lambda: last_logged_step(run) > before)
    pause.touch()
    training.wait_for(pause.with_suffix(".inside").exists)
    training.process.kill()
    assert training.finish() == -signal.SIGKILL
    assert_only_complete_checkpoints(run)
    assert any(ckpt.PARTIAL_FILE.match(p.name) for p in (run / "checkpoints").iterdir())

    # 3. the next run removes the temporary file, resumes and finishes exactly as the straight run
    result = run_cli("train", *train_args(run, corpus))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed 1 temporary file" in result.stderr
    assert not any(ckpt.PARTIAL_FILE.match(p.name) for p in (run / "checkpoints").iterdir())
    assert losses(run) == losses(straight)  # steps done twice (after a kill) logged the same loss
    assert_same_parameters(run, straight)


# ----------------------------------------------------------------------------- a full disk, non-finite numbers


def resumable_copy(straight: Path, tmp_path: Path, step: int) -> Path:
    """A fresh run folder whose checkpoint_last.pt is the straight run's checkpoint of `step`."""
    run = fresh_run(straight, tmp_path, "run")
    (run / "checkpoints").mkdir()
    shutil.copy(straight / f"checkpoints/checkpoint_{step}.pt", run / "checkpoints/checkpoint_last.pt")
    return run


def test_full_disk_while_saving_is_one_clear_error_and_keeps_the_last_checkpoint(straight, corpus, tmp_path):
    run = resumable_copy(straight, tmp_path, 8)

    def small_files_only() -> None:  # the kernel refuses writes past 256 KiB (EFBIG), as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    result = subprocess.run(
        [sys.executable, "-m", "transformer_mt", "train", *train_args(run, corpus, "trainer.max_steps=12")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        preexec_fn=small_files_only,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "could not write checkpoint" in error and "File too large" in error, error
    assert "Traceback" not in result.stderr
    assert step_of(run / "checkpoints/checkpoint_last.pt") == 8
    assert_only_complete_checkpoints(run)
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())  # temp files removed


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_non_finite_updates_are_skipped_then_stop_naming_the_last_good_checkpoint(
    straight, corpus, tmp_path, capsys, precision
):
    """lr=1e30 sends the weights to ~1e29 in one update; every later gradient is non-finite."""
    run = resumable_copy(straight, tmp_path, 8)
    error = cli_error(
        capsys, ["train", *train_args(run, corpus, "trainer.lr=1e30", f"trainer.precision={precision}")]
    )
    last = run / "checkpoints/checkpoint_last.pt"
    prepared_again = (run / "data/spm.model").read_bytes() != (straight / "data/spm.model").read_bytes()
    assert not prepared_again
    assert "step 10: 10 updates in a row had non-finite gradients" in error, error
    assert f"the last good checkpoint is {last} (step 8)" in error
    log = (run / "train.log").read_text()
    skipped = re.findall(r"step 10: non-finite gradients; update skipped(.*) \((\d+) so far\)", log)
    if precision == "fp16":  # the scaler halves its scale on each overflow; counted once it is below 1
        assert skipped[0][0] == ", loss scale lowered to 32768" and len(skipped) == 17 + 9
    else:
        assert len(skipped) == 10
    assert [int(n) for _, n in skipped] == list(range(1, len(skipped) + 1))
    saved = ckpt.load_checkpoint(last)
    assert saved["step"] == 8 and all(t.isfinite().all() for t in saved["model"].values())


# ----------------------------------------------------------------------------- checkpoints from elsewhere


class Payload:
    """Unpickling this runs `touch MARKER` (pickle calls os.system): what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_checkpoint_is_refused_by_translate_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"format": ckpt.FORMAT, "model": Payload(marker)}, tmp_path / "evil.pt")
    result = run_cli("translate", f"checkpoint={tmp_path}/evil.pt", stdin="hello\n")
    assert result.returncode == 2
    assert "could run code" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_broken_and_mismatched_checkpoints_are_one_line_from_translate(straight, tmp_path, capsys):
    good = straight / "checkpoints/checkpoint_last.pt"
    state = ckpt.load_checkpoint(good)
    bad: dict[str, tuple[Path, str]] = {}

    def write(name: str, content: bytes | dict, message: str) -> None:
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            ckpt.save_checkpoint(content, path)
        bad[name] = (path, message)

    write("empty", b"", "is empty")
    write("truncated", good.read_bytes()[: good.stat().st_size // 2], "truncated or not a checkpoint")
    write("text", b"model weights\n", "truncated or not a checkpoint")
    write("foreign", {"state_dict": state["model"]}, "not a transformer-mt checkpoint")
    write("no_model", {k: v for k, v in state.items() if k != "model"}, "incomplete or inconsistent")
    write("unknown_arch", {**state, "model_config": {"arch": "rnn"}}, "incomplete or inconsistent")
    write("wider_model", {**state, "model_config": {**state["model_config"], "ffn_dim": 128}}, "does not fit")
    write("bad_sentencepiece", {**state, "sentencepiece": b"\x00garbage"}, "incomplete or inconsistent")
    lines = [f"word{i} other{i}" for i in range(200)]
    smaller = train_vocabulary(lines, tmp_path / "spm", vocab_size=120, num_threads=1)
    write("other_vocab", {**state, "sentencepiece": smaller.to_bytes()}, "200-token vocabulary but")
    for path, message in bad.values():
        error = cli_error(capsys, ["translate", f"checkpoint={path}"], one_line=True)
        assert message in error and str(path) in error, error


def test_resume_with_another_vocabulary_is_refused(straight, corpus, tmp_path, capsys):
    run = resumable_copy(straight, tmp_path, 8)
    state = ckpt.load_checkpoint(run / "checkpoints/checkpoint_last.pt")
    state["sentencepiece"] = train_vocabulary(
        [f"w{i} v{i}" for i in range(300)], tmp_path / "spm", vocab_size=200, num_threads=1
    ).to_bytes()
    ckpt.save_checkpoint(state, run / "checkpoints/checkpoint_last.pt")
    error = cli_error(capsys, ["train", *train_args(run, corpus)])
    assert "another sentencepiece vocabulary" in error


def test_resume_from_a_checkpoint_without_a_model_or_of_another_model_is_one_line(straight, corpus, tmp_path, capsys):
    run = resumable_copy(straight, tmp_path, 8)
    last = run / "checkpoints/checkpoint_last.pt"
    state = ckpt.load_checkpoint(last)
    ckpt.save_checkpoint({k: v for k, v in state.items() if k not in ("model", "model_config")}, last)
    error = cli_error(capsys, ["train", *train_args(run, corpus)], one_line=True)
    assert f"{last} cannot be resumed from: it has no model, model_config entry" in error

    ckpt.save_checkpoint({**state, "model_config": {**state["model_config"], "ffn_dim": 128}}, last)
    error = cli_error(capsys, ["train", *train_args(run, corpus)], one_line=True)
    assert "its config differs in ffn_dim (checkpoint 128, this run 64)" in error and "{" not in error, error


# A disk that is full when TensorBoard writes its events (ENOSPC for the files of RUN/tensorboard).
FULL_TENSORBOARD_CLI = """
import errno, io, sys
real_open = io.open
def full_open(file, mode="r", *args, **kwargs):
    if "/tensorboard/" in str(file) and any(m in mode for m in "wa"):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return real_open(file, mode, *args, **kwargs)
io.open = full_open
from transformer_mt.cli import main
main(sys.argv[1:])
"""


def test_a_full_disk_at_tensorboard_is_one_line_naming_it_without_a_thread_traceback(straight, corpus, tmp_path):
    run = resumable_copy(straight, tmp_path, 8)
    result = subprocess.run(
        [sys.executable, "-c", FULL_TENSORBOARD_CLI, "train", *train_args(run, corpus)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert f"could not write {run / 'tensorboard'}: No space left on device" in error, error
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------- hostile input to translate


def test_translate_gives_one_line_per_input_line_for_hostile_input(straight, tmp_path):
    junk = bytes(random.Random(3).randrange(256) for _ in range(4000)).replace(b"\n", b"")
    lines = [
        junk,  # binary: NUL, CR, invalid UTF-8, C1 controls
        b"the dog sees the house " * 4400,  # a 100k-character line
        b"   \t  ",
        b"",
        "שלום עולם ومرحبا بالعالم".encode(),  # right-to-left scripts
        "e\u0301\u0302\u0303 a\u20dd Zalgo\u0336\u0337".encode(),  # combining characters
        "\U0001f600 \U0001f44d\U0001f3fd \U0001f1e9\U0001f1ea \u200d\u200b".encode(),  # emoji, joiners
        "\ufeffa BOM, a line\u2028separator, a carriage\rreturn".encode(),
        b"the old man sees the dog\r",  # a CRLF line end
    ]
    source = tmp_path / "hostile.txt"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "transformer_mt", "translate", f"checkpoint={straight / 'checkpoints/checkpoint_last.pt'}"],
        input=source.read_bytes(), capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    assert result.stdout.count(b"\n") == len(lines)
    out = result.stdout.decode("utf-8").split("\n")[:-1]
    assert out[2] == out[3] == ""  # whitespace-only and empty lines stay empty
    assert "Traceback" not in result.stderr.decode(errors="replace")


# ----------------------------------------------------------------------------- corpus faults (fuzzed)

BOM = b"\xef\xbb\xbf"
PIECES = [b"a", b"Haus", b" ", b"\t", b"\r", b"\x00", b"\x1b", BOM, b"\xc3\xa9", b"\xe2\x80\xa8", b"\xc2\x85"]
PIECES += [b"\xff", b"\xc3", b"\xf0\x9f\x98\x80", b"\x0c", b"\xd7\xa9"]
line_bytes = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
)


@st.composite
def text_file(draw) -> bytes:
    """A file: lines with LF, CRLF or CR ends (or none on the last), a BOM, or raw random bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=60))
    lines = draw(st.lists(line_bytes, max_size=6))
    ends = [draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) for _ in lines]
    if lines and draw(st.booleans()):
        ends[-1] = b""
    return (BOM if draw(st.booleans()) else b"") + b"".join(
        line + end for line, end in zip(lines, ends, strict=True)
    )


def expected_lines(data: bytes) -> list[bytes]:
    """The reader's contract: in a file with any LF, lines end at LF, at CRLF, or at a CR that ends the
    file (any other CR is text); in a file without LF, at CR. A final line end adds no line, a last
    line without one counts; a BOM at the start is not text."""
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\n")
        parts = (data[:-1] + b"\n" if data.endswith(b"\r") else data).split(b"\n")
    else:
        parts = data.split(b"\r")
    if parts[-1] == b"":
        parts.pop()
    if parts and parts[0].startswith(BOM):
        parts[0] = parts[0][len(BOM) :]
    return parts


def names_a_real_fault(message: str, files: dict[str, tuple[bytes, list[bytes]]]) -> bool:
    """Whether the error is about a fault the files really have: empty, invalid UTF-8 on the line
    it names, or unequal line counts (the right ones)."""
    if found := re.search(r"train\.(en|de): file is empty", message):
        return not files[found[1]][0]
    if found := re.search(r"train\.(en|de):(\d+): invalid UTF-8", message):
        return not utf8([files[found[1]][1][int(found[2]) - 1]])
    n_src, n_tgt = len(files["en"][1]), len(files["de"][1])
    return n_src != n_tgt and bool(
        re.search(rf"train\.en has {n_src} lines but \S+train\.de has {n_tgt}", message)
    )


def utf8(lines: list[bytes]) -> bool:
    try:
        [line.decode("utf-8") for line in lines]
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(src=text_file(), tgt=text_file(), chunk_bytes=st.sampled_from([1, 2, 3, 1 << 20]))
def test_fuzzed_files_are_read_aligned_or_refused_with_a_clear_error(src, tgt, chunk_bytes):
    # Small read chunks put line ends (a CR, a CRLF, the first LF) across chunk boundaries.
    chunks = mock.patch("transformer_mt.data.corpus._CHUNK_BYTES", chunk_bytes)
    with tempfile.TemporaryDirectory() as folder, chunks:
        prefix = Path(folder) / "train"
        Path(f"{prefix}.en").write_bytes(src)
        Path(f"{prefix}.de").write_bytes(tgt)
        src_lines, tgt_lines = expected_lines(src), expected_lines(tgt)
        try:
            pairs = list(TextCorpus({"train": prefix}, "en", "de").pairs("train"))
        except CorpusError as err:
            assert "\n" not in str(err)
            assert names_a_real_fault(str(err), {"en": (src, src_lines), "de": (tgt, tgt_lines)}), str(err)
            return
    assert src and tgt and len(src_lines) == len(tgt_lines) and utf8(src_lines + tgt_lines)
    expected = [
        (normalise(s.decode()), normalise(t.decode())) for s, t in zip(src_lines, tgt_lines, strict=True)
    ]
    assert pairs == expected

    stats = CleaningStats("train")
    kept = list(clean_pairs(iter(pairs), stats, max_len=3, max_chars=20))
    remaining = iter(pairs)
    assert all(pair in remaining for pair in kept)  # kept pairs are input pairs, in order, never re-paired
    assert stats.read == len(pairs) and stats.kept == len(kept)
    assert (
        stats.kept + stats.empty + stats.control + stats.too_long + stats.too_short + stats.ratio
        == stats.read
    )


def test_corpus_error_is_one_line_from_prepare(tmp_path, capsys):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.en").write_bytes(b"a house\ncaf\xe9\n" if split == "train" else b"a\nb\n")
        (tmp_path / f"{split}.de").write_bytes(b"ein Haus\nCafe\n")
    error = cli_error(
        capsys, ["prepare", *files_overrides(tmp_path), f"output_dir={tmp_path / 'run'}"], one_line=True
    )
    assert f"{tmp_path / 'train.en'}:2: invalid UTF-8" in error


# ----------------------------------------------------------------------------- configs that cannot work


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.attention_window=1024", "attention_window=1024"),  # transformer_tiny: max_positions=1024
        ("trainer.max_nonfinite_steps=0", "max_nonfinite_steps"),
        ("trainer.dist_timeout_s=0", "dist_timeout_s"),
    ],
)
def test_impossible_config_is_refused_before_any_work(tmp_path, capsys, override, message):
    missing = files_overrides(tmp_path / "missing")  # were the config accepted, this would fail at once
    error = cli_error(capsys, ["train", *missing, override, f"output_dir={tmp_path / 'run'}"], one_line=True)
    assert message in error
    assert not (tmp_path / "run").exists()


def test_no_training_pair_fitting_the_model_is_an_error_not_a_hang(straight, corpus, tmp_path, capsys):
    def hung(signum, frame):
        pytest.fail("training with no pair that fits the model hangs")

    run = fresh_run(straight, tmp_path, "run")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        error = cli_error(capsys, ["train", *train_args(run, corpus, "model.max_positions=3")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "none of the 600 training pairs fits the model" in error


# ----------------------------------------------------------------------------- DDP: a rank dies


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rank_of(pid: int) -> int | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the ranks")
def test_ddp_survives_a_dead_rank_resumes_and_stops_together(straight, corpus, tmp_path):
    run = fresh_run(straight, tmp_path, "run")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "transformer_mt", "train", *train_args(run, corpus, "trainer.dist_timeout_s=60"),
    ]  # fmt: skip

    def launch(steps: int) -> tuple[Background, dict[int, int]]:
        """Start the job, wait for `steps` new steps, and find its two workers by their RANK."""
        job = Background(command)
        before = last_logged_step(run)
        job.wait_for(lambda: last_logged_step(run) >= before + steps)
        workers = {rank_of(pid): pid for pid in children(job.process.pid)}
        assert set(workers) == {0, 1}, workers
        return job, workers

    # kill -9 of rank 1 after checkpoint 4: the job ends within a bounded time with an error, not a hang.
    job, workers = launch(steps=5)
    os.kill(workers[1], signal.SIGKILL)
    assert job.finish(timeout=180) != 0
    assert_only_complete_checkpoints(run)
    resume_from = step_of(run / "checkpoints/checkpoint_last.pt")
    assert resume_from >= 4

    # The same command again resumes from the last checkpoint. SIGTERM to rank 1 alone: the ranks agree
    # to stop after the same update, and rank 0 saves that update's state for both.
    job, workers = launch(steps=1)
    os.kill(workers[1], signal.SIGTERM)
    job.finish()
    assert f"resumed from {run / 'checkpoints/checkpoint_last.pt'} at step {resume_from}" in job.stderr()
    stopped_at = last_logged_step(run)
    saved = ckpt.load_checkpoint(run / "checkpoints/checkpoint_last.pt")
    assert resume_from < stopped_at == saved["step"] and len(saved["rng"]) == 2
    assert "stopped: SIGTERM received" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------- commands that must not destroy a file


def test_an_output_that_is_an_input_is_refused_before_anything_is_written(straight, tmp_path, capsys):
    """`translate input=F output=F` used to empty F, and `evaluate output=REF` to overwrite the
    reference: the same file by any name (a hard or a symbolic link too) is refused first."""
    checkpoint = straight / "checkpoints/checkpoint_last.pt"
    source, reference = tmp_path / "src.txt", tmp_path / "ref.txt"
    source.write_text("the dog sees the house\na man\n")
    reference.write_text("der Hund sieht das Haus\nein Mann\n")
    os.link(source, tmp_path / "hard.txt")
    (tmp_path / "soft.txt").symlink_to(source)
    for output in (source, tmp_path / "hard.txt", tmp_path / "soft.txt"):
        error = cli_error(capsys, ["translate", f"checkpoint={checkpoint}", f"input={source}", f"output={output}"])
        assert f"output={output} is the same file as input={source}" in error, error
    error = cli_error(capsys, ["translate", f"checkpoint={checkpoint}", f"input={source}", f"output={checkpoint}"])
    assert "is the same file as checkpoint=" in error
    evaluate = ["evaluate", f"checkpoint={checkpoint}", f"input={source}", f"reference={reference}"]
    error = cli_error(capsys, [*evaluate, f"output={reference}"])
    assert f"output={reference} is the same file as reference={reference}" in error
    error = cli_error(capsys, [*evaluate, f"report={tmp_path / 'hard.txt'}"])
    assert "is the same file as input=" in error
    assert source.read_text() == "the dog sees the house\na man\n"
    assert reference.read_text() == "der Hund sieht das Haus\nein Mann\n"
    assert os.readlink(tmp_path / "soft.txt") == str(source)


def test_translate_output_replaces_the_file_only_when_done(straight, tmp_path):
    """The translation goes to a temporary file beside output= and is renamed at the end: a translate
    killed half-way (here waiting for more input on a pipe) leaves the previous file whole."""
    checkpoint = straight / "checkpoints/checkpoint_last.pt"
    output = tmp_path / "out.txt"
    output.write_text("the previous translation\n")
    output.chmod(0o640)
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "transformer_mt", "translate", f"checkpoint={checkpoint}"]
    translating = Background([*command, f"input={fifo}", f"output={output}", "decoding.beam=1"])
    with open(fifo, "w") as feed:
        feed.write("the dog sees the house\n" * 3)
        feed.flush()
        time.sleep(3)  # the model is loaded and the first lines read; it waits for the rest
        translating.process.kill()
        assert translating.finish() == -signal.SIGKILL
    assert output.read_text() == "the previous translation\n"

    (tmp_path / "in.txt").write_text("the dog sees the house\n\na man\n")
    before = set(tmp_path.iterdir())  # with the kill's temporary file (kill -9 leaves it; it is hidden)
    result = run_cli("translate", f"checkpoint={checkpoint}", f"input={tmp_path / 'in.txt'}", f"output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.read_text().count("\n") == 3 and output.stat().st_mode & 0o777 == 0o640
    assert set(tmp_path.iterdir()) == before  # the finished run's temporary file became out.txt


def test_translate_warns_on_one_line_naming_the_line_of_the_whole_input(straight):
    """Lines are translated 2,000 at a time: the truncation warning counts from the start of the
    input, not of the chunk, and is one line on stderr (not Python's two-line warning)."""
    lines = [""] * 2500 + ["the dog sees the house " * 300, "a man"]
    result = run_cli(
        "translate", f"checkpoint={straight / 'checkpoints/checkpoint_last.pt'}", "decoding.beam=1",
        "decoding.max_len_a=0", "decoding.max_len_b=3", stdin="\n".join(lines) + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\n") == len(lines)
    assert result.stderr.strip().splitlines() == [
        "transformer-mt: warning: input line 2501: 3000 subword tokens do not fit the model's "
        "max_positions=1024; translating only the first 1023"
    ], result.stderr


def test_nbest_gives_k_lines_for_every_input_line_even_an_empty_one(straight):
    result = run_cli(
        "translate", f"checkpoint={straight / 'checkpoints/checkpoint_last.pt'}", "decoding.beam=3",
        "decoding.nbest=2", stdin="the dog\n\n   \na man\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(index, rank) for index, rank, *_ in rows] == [(str(i), str(r)) for i in range(4) for r in (1, 2)]
    assert rows[2] == rows[3][:1] + ["1"] + rows[3][2:] and rows[2][3] == ""  # the empty line's translation, twice


def test_average_never_replaces_a_training_checkpoint(straight, tmp_path, capsys):
    """`average output=RUN/checkpoints/checkpoint_last.pt` used to replace the training state (the next
    train failed with KeyError 'optimizer')."""
    run = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", run / "checkpoints")
    last = run / "checkpoints/checkpoint_last.pt"
    before = last.read_bytes()
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_20.pt"):
        error = cli_error(capsys, ["average", f"output_dir={run}", f"output={run / 'checkpoints' / name}"], one_line=True)
        assert f"{name} is a name training uses for its own checkpoints" in error, error
    shutil.copy(last, tmp_path / "state.pt")
    error = cli_error(capsys, ["average", f"output_dir={run}", f"output={tmp_path / 'state.pt'}"], one_line=True)
    assert "is a training checkpoint" in error
    (tmp_path / "notes.txt").write_text("my notes\n")
    error = cli_error(capsys, ["average", f"output_dir={run}", f"output={tmp_path / 'notes.txt'}"], one_line=True)
    assert "exists and is not a checkpoint" in error
    error = cli_error(capsys, ["average", f"output_dir={run}", "last=0"], one_line=True)
    assert "last=0 must be at least 1" in error
    assert last.read_bytes() == before and (tmp_path / "notes.txt").read_text() == "my notes\n"

    steps = len(ckpt.step_checkpoints(run / "checkpoints"))
    for _ in range(2):  # and again over its own previous average
        result = run_cli("average", f"output_dir={run}", "last=10")
        assert result.returncode == 0, result.stderr[-3000:]
    assert f"holds {steps} step checkpoint(s), fewer than last=10; averaging those {steps}" in result.stderr
    assert "optimizer" not in ckpt.load_checkpoint(run / "checkpoints/checkpoint_avg_last10.pt")


def test_average_refuses_mismatched_and_malformed_checkpoints_in_one_line(straight, tmp_path, capsys):
    good = straight / "checkpoints/checkpoint_last.pt"
    state = ckpt.load_checkpoint(good)
    other_vocab = train_vocabulary([f"w{i} v{i}" for i in range(300)], tmp_path / "spm", vocab_size=200, num_threads=1)
    first_name = next(iter(state["model"]))
    wider = {**state["model"], first_name: torch.zeros(3, 5)}
    cases = {
        "other_vocab": ({**state, "sentencepiece": other_vocab.to_bytes()}, "their vocabularies differ (piece "),
        "other_shape": ({**state, "model": wider}, f"tensor {first_name!r} is {tuple(state['model'][first_name].shape)}"),
        "no_model": ({k: v for k, v in state.items() if k != "model"}, "holds no model parameters"),
        "not_tensors": ({**state, "model": {"w": "text"}}, "model entry 'w' is not a tensor"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        ckpt.save_checkpoint(content, path)
        error = cli_error(capsys, ["average", f"checkpoints=[{good},{path}]", f"output={tmp_path}/avg.pt"], one_line=True)
        assert message in error, error
        if name.startswith("other"):
            assert f"cannot average {good} and {path}" in error
    assert not (tmp_path / "avg.pt").exists()


def test_runs_on_the_same_data_in_other_folders_resume_and_ensemble(straight, corpus, tmp_path, capsys):
    """A vocabulary prepared from the same data in another folder is the same vocabulary (its
    serialized model differs only in the paths it records): a checkpoint copied there resumes
    bit-exact, and checkpoints of both folders make an ensemble."""
    moved = tmp_path / "elsewhere/run"
    result = run_cli("prepare", *files_overrides(corpus), f"output_dir={moved}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (moved / "data/spm.model").read_bytes() != (straight / "data/spm.model").read_bytes()
    (moved / "checkpoints").mkdir()
    shutil.copy(straight / "checkpoints/checkpoint_8.pt", moved / "checkpoints/checkpoint_last.pt")
    result = run_cli("train", *train_args(moved, corpus))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_parameters(moved, straight)

    checkpoints = f"checkpoint=[{straight / 'checkpoints/checkpoint_last.pt'},{moved / 'checkpoints/checkpoint_last.pt'}]"
    result = run_cli("translate", checkpoints, "decoding.beam=2", stdin="the dog sees the house\n")
    assert result.returncode == 0 and result.stdout.count("\n") == 1, result.stderr[-3000:]


def test_corrupt_bytes_model_less_checkpoints_and_folders_are_one_line(straight, tmp_path, capsys):
    """A flipped byte in a tensor used to translate silently; a checkpoint with the format tag but
    no model gave KeyError tracebacks in evaluate; a run folder as checkpoint= said "not found"."""
    good = straight / "checkpoints/checkpoint_last.pt"
    state = ckpt.load_checkpoint(good)
    data = bytearray(good.read_bytes())
    tensor = next(t for t in state["model"].values() if t.numel() > 1000)
    data[data.find(tensor.numpy().tobytes()) + 2000] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    error = cli_error(capsys, ["translate", f"checkpoint={tmp_path / 'flipped.pt'}"], one_line=True)
    assert f"checkpoint {tmp_path / 'flipped.pt'} is corrupt" in error

    (tmp_path / "elsewhere").mkdir()
    ckpt.save_checkpoint({"format": ckpt.FORMAT}, tmp_path / "elsewhere/tag_only.pt")
    for command in ("evaluate", "translate"):
        error = cli_error(capsys, [command, f"checkpoint={tmp_path / 'elsewhere/tag_only.pt'}"], one_line=True)
        assert str(tmp_path / "elsewhere/tag_only.pt") in error and "KeyError" not in error, error

    error = cli_error(capsys, ["translate", f"checkpoint={straight}"], one_line=True)
    assert error.endswith(f"is a directory, not a checkpoint file; pass a file in it, e.g. checkpoint={straight / 'checkpoints/checkpoint_best.pt'}")
