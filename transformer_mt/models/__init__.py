"""Model families behind one interface, and the one place that maps a config to a model."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transformer_mt.models.convs2s import ConvS2S, ConvS2SConfig
from transformer_mt.models.interface import DecoderState, EncoderDecoder, EncoderOutput, count_parameters
from transformer_mt.models.lstm import LSTMConfig, LSTMSeq2Seq
from transformer_mt.models.transformer import Transformer, TransformerConfig

FAMILIES: dict[str, tuple[type[EncoderDecoder], type]] = {  # model.arch -> (model, its config dataclass)
    "transformer": (Transformer, TransformerConfig),
    "lstm": (LSTMSeq2Seq, LSTMConfig),
    "convs2s": (ConvS2S, ConvS2SConfig),
}


def build_model(cfg: Any, vocab_size: int, pad_id: int) -> EncoderDecoder:
    """Build the model a config describes. `cfg` is a model config dataclass (or a dict of one)."""
    model_class, _ = FAMILIES[_arch(cfg)]
    return model_class(model_config(cfg), vocab_size=vocab_size, pad_id=pad_id)


def model_config(cfg: Any) -> Any:
    """The config as its family's dataclass (validated by it), from a dataclass, an OmegaConf node or a
    plain dict; a key the family does not have is a ValueError that names it and the family's keys."""
    _, config_class = FAMILIES[_arch(cfg)]
    if isinstance(cfg, config_class):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    known = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(
            f"model.{unknown[0]} is not an option of the {cfg['arch']} model; its options: {', '.join(known)}"
        )
    return config_class(**cfg)


def _arch(cfg: Any) -> str:
    arch = cfg["arch"] if isinstance(cfg, (dict, DictConfig)) else cfg.arch
    if arch not in FAMILIES:
        raise ValueError(f"model.arch={arch!r} is not one of: {', '.join(FAMILIES)}")
    return arch


__all__ = ["build_model", "model_config", "FAMILIES", "EncoderDecoder", "EncoderOutput", "DecoderState", "count_parameters"]
