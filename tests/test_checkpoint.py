"""Checkpoints: atomic writes, safe loading, clear errors, rotation and averaging."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from transformer_mt import checkpoint as ckpt


def state(value: float, step: int = 1) -> dict:
    return {
        "format": ckpt.FORMAT,
        "model": {"embed.weight": torch.full((4, 2), value), "steps": torch.tensor(step)},
        "model_config": {"arch": "transformer"},
        "step": step,
    }


def test_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(state(1.5), path)
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["embed.weight"], torch.full((4, 2), 1.5))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_crash_mid_write_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    ckpt.save_checkpoint(state(1.0), path)
    # A real process killed with SIGKILL in the middle of writing a large checkpoint.
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from transformer_mt import checkpoint as ckpt
        real_fsync = os.fsync
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        ckpt.save_checkpoint({{"format": ckpt.FORMAT, "model": {{"w": torch.zeros(1_000_000)}}}}, {str(path)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["embed.weight"], torch.full((4, 2), 1.0))


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(state(1.0), path)
    # A real write failure: the file-size limit makes the kernel refuse the write (EFBIG), as a full disk would.
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        from transformer_mt import checkpoint as ckpt
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            ckpt.save_checkpoint({{"format": ckpt.FORMAT, "model": {{"w": torch.zeros(100_000)}}}}, {str(path)!r})
        except ckpt.CheckpointError as err:
            print(err)
            sys.exit(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert "could not write checkpoint" in result.stdout and str(path) in result.stdout
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # the temporary file was removed


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "model": {}, "x": Payload()}, path)
    with pytest.raises(ckpt.CheckpointError, match="could run code"):
        ckpt.load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"not a checkpoint at all", "truncated or not a checkpoint"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=message) as err:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_truncated_and_missing_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    ckpt.save_checkpoint(state(1.0), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load_checkpoint(cut)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a transformer-mt checkpoint"):
        ckpt.load_checkpoint(foreign)


def test_flipped_bytes_in_tensor_data_are_refused_naming_the_file(tmp_path):
    """The digest written with a checkpoint covers every byte; one flipped bit in a tensor is refused
    (torch.load alone reads it silently: tensor data carries no check)."""
    path = tmp_path / "c.pt"
    weights = torch.arange(10_000, dtype=torch.float32)
    ckpt.save_checkpoint({**state(1.0), "model": {"w": weights}}, path)
    data = bytearray(path.read_bytes())
    at = data.find(weights.numpy().tobytes()) + 4 * 5000  # inside the tensor's bytes
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], weights)  # silently wrong
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {path} is corrupt: its bytes do not match"):
        ckpt.load_checkpoint(path)


def test_checkpoints_without_a_digest_still_load_with_a_notice(tmp_path, capsys):
    old = tmp_path / "old.pt"
    torch.save(state(2.0), old)  # as save_checkpoint wrote it before digests
    assert torch.equal(ckpt.load_checkpoint(old)["model"]["embed.weight"], torch.full((4, 2), 2.0))
    notice = capsys.readouterr().err.strip()
    assert notice == (
        f"transformer-mt: notice: checkpoint {old} has no digest (written before checkpoints carried one), "
        "so its bytes cannot be checked; saving it again adds one"
    )
    ckpt.save_checkpoint(ckpt.load_checkpoint(old), tmp_path / "new.pt")
    capsys.readouterr()
    ckpt.load_checkpoint(tmp_path / "new.pt")
    assert capsys.readouterr().err == ""


def test_a_directory_is_not_a_checkpoint_and_the_message_says_which_file(tmp_path):
    run = tmp_path / "run"
    ckpt.save_checkpoint(state(1.0), run / "checkpoints/checkpoint_best.pt")
    ckpt.save_checkpoint(state(1.0), run / "checkpoints/checkpoint_last.pt")
    best = run / "checkpoints/checkpoint_best.pt"
    for folder in (run, run / "checkpoints"):
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.load_checkpoint(folder)
        assert str(err.value) == (
            f"checkpoint {folder} is a directory, not a checkpoint file; pass a file in it, e.g. checkpoint={best}"
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"empty is a directory, not a checkpoint file$"):
        ckpt.load_checkpoint(tmp_path / "empty")


def test_rotation_keeps_the_newest(tmp_path):
    for step in (100, 200, 300, 1000):
        ckpt.save_checkpoint(state(1.0, step), tmp_path / f"checkpoint_{step}.pt")
    ckpt.rotate(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["checkpoint_300.pt", "checkpoint_1000.pt"]


def test_average_is_the_mean_of_parameters(tmp_path):
    paths = []
    for i, value in enumerate((1.0, 2.0, 6.0)):
        paths.append(tmp_path / f"checkpoint_{i}.pt")
        ckpt.save_checkpoint(state(value, step=i), paths[-1])
    averaged = ckpt.average_checkpoints(paths)
    assert torch.allclose(averaged["model"]["embed.weight"], torch.full((4, 2), 3.0))
    assert averaged["model"]["steps"].item() == 2  # integer buffers are taken from the last
    assert "optimizer" not in averaged and averaged["format"] == ckpt.FORMAT
