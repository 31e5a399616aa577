"""What the command modules share: composing a config, showing it for --help, loading a translator
over the checkpoints that an evaluate/translate config names, and writing output files safely."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from omegaconf import OmegaConf

from transformer_mt.config import compose_config, explicit_keys, to_objects
from transformer_mt.decoding.translator import Translator


def load_config(command: str, overrides: list[str], show_help: bool, doc: str) -> Any | None:
    """The instantiated config of `command`, or None after printing the help."""
    cfg = compose_config(command, overrides)
    if show_help:
        print(f"transformer-mt {command}: {doc.strip()}\n\nConfig (override any key with key=value):\n")
        print(OmegaConf.to_yaml(cfg))
        return None
    return to_objects(cfg)


def checkpoint_paths(value: Any) -> list[str]:
    """`checkpoint=PATH` or `checkpoint=[A,B]` as a list of paths."""
    if value is None:
        raise ValueError("checkpoint=PATH is required (checkpoint=[A,B] for an ensemble)")
    paths = [value] if isinstance(value, str) else list(value)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"checkpoint must be a path or a list of paths, got {value!r}")
    return paths


def checkpoint_inputs(value: Any) -> dict[str, str]:
    """The checkpoints of `checkpoint=` by the names a message gives them (for `refuse_overwriting`)."""
    paths = checkpoint_paths(value)
    if len(paths) == 1:
        return {"checkpoint": paths[0]}
    return {f"checkpoint[{i}]": path for i, path in enumerate(paths)}


def decoding_overrides(cfg: Any, overrides: list[str]) -> dict[str, Any]:
    """The decoding settings the command line gives (`decoding.KEY=VALUE`, or all of a preset
    chosen with `decoding=NAME`), to lay over those the checkpoint's run stored."""
    decoding = asdict(cfg.decoding)
    keys = explicit_keys(overrides, "decoding")
    if keys is not None:
        decoding = {key: value for key, value in decoding.items() if key in keys}
    return decoding


def load_translator(cfg: Any, overrides: list[str]) -> Translator:
    """A Translator over the checkpoint (or ensemble) of an evaluate/translate config. It decodes as
    the checkpoint's run validated, except for the `decoding.*` keys given on the command line."""
    return Translator.from_checkpoint(
        checkpoint_paths(cfg.checkpoint),
        device=cfg.device,
        precision=cfg.precision,
        warn=warn,
        **decoding_overrides(cfg, overrides),
    )


def warn(message: str) -> None:
    """A warning for people: one line on stderr (not Python's two-line `warnings` format)."""
    print(f"transformer-mt: warning: {message}", file=sys.stderr)


def refuse_overwriting(outputs: dict[str, str | None], inputs: dict[str, Any]) -> None:
    """A ValueError if an output (`key -> path`, None: not written) is one of the inputs or another
    output: the same file by any name, links included (same device and inode). Called before
    anything is opened for writing, so `translate input=F output=F` cannot empty F."""
    named = [(key, Path(path)) for key, path in inputs.items() if path is not None]
    for key, path in outputs.items():
        if path is None:
            continue
        for other_key, other in named:
            if _same_file(path, other):
                raise ValueError(
                    f"{key}={path} is the same file as {other_key}={other}; writing it would destroy it, "
                    f"so choose another {key}"
                )
        named.append((key, Path(path)))


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


@contextlib.contextmanager
def replace_when_done(path: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file that becomes `path` only when the block ends without an error: it is written
    to a temporary file in the same folder and renamed over `path`, so an interrupted command leaves
    the previous file (or none), never a half-written one. A link is replaced by the file it names."""
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            yield sink
        os.chmod(tmp, _mode_of(target))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_of(path: Path) -> int:
    """The permissions `path` has, or those a new file gets under the umask (mkstemp makes 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
