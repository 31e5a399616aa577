"""What the command modules share: composing a config, and showing it for --help."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from transformer_mt.config import compose_config, to_objects


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


def load_translator(cfg: Any):
    """A Translator over the checkpoint (or ensemble) that an evaluate/translate config names."""
    import dataclasses

    import torch

    from transformer_mt.decoding.search import DecodingConfig
    from transformer_mt.decoding.translator import Translator
    from transformer_mt.training.checkpoint import CheckpointError, load_for_inference
    from transformer_mt.training.distributed import PRECISIONS

    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision={cfg.precision!r} is not one of: {', '.join(PRECISIONS)}")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    models, vocab = [], None
    for path in checkpoint_paths(cfg.checkpoint):
        model, model_vocab, _ = load_for_inference(path, device)
        if vocab is not None and model_vocab.to_bytes() != vocab.to_bytes():
            raise CheckpointError(f"{path} uses a different vocabulary from the first checkpoint; cannot ensemble")
        models.append(model)
        vocab = model_vocab
    decoding = DecodingConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DecodingConfig)})
    dtype = None if cfg.precision == "fp32" else PRECISIONS[cfg.precision]
    return Translator(models, vocab, decoding, device=device, dtype=dtype), vocab
