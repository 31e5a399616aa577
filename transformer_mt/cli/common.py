"""What the command modules share: composing a config, showing it for --help, and loading a
translator over the checkpoints that an evaluate/translate config names."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

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
        quantize=cfg.quantize,
        **decoding_overrides(cfg, overrides),
    )
