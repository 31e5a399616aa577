"""Model families behind one interface, and the one place that maps a config to a model."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from transformer_mt.models.convs2s import ConvS2S, ConvS2SConfig
from transformer_mt.models.interface import DecoderState, EncoderDecoder, EncoderOutput, count_parameters
from transformer_mt.models.lstm import LSTMConfig, LSTMSeq2Seq
from transformer_mt.models.transformer import Transformer, TransformerConfig


def build_model(cfg: Any, vocab_size: int, pad_id: int) -> EncoderDecoder:
    """Build the model a config describes. `cfg` is a model config dataclass (or a dict of one)."""
    arch = cfg["arch"] if isinstance(cfg, (dict, DictConfig)) else cfg.arch
    match arch:
        case "transformer":
            return Transformer(_as(TransformerConfig, cfg), vocab_size=vocab_size, pad_id=pad_id)
        case "lstm":
            return LSTMSeq2Seq(_as(LSTMConfig, cfg), vocab_size=vocab_size, pad_id=pad_id)
        case "convs2s":
            return ConvS2S(_as(ConvS2SConfig, cfg), vocab_size=vocab_size, pad_id=pad_id)
    raise ValueError(f"model.arch={arch!r} is not one of: transformer, lstm, convs2s")


def _as(config_class: type, cfg: Any) -> Any:
    """The config as its dataclass, from a dataclass, an OmegaConf node or a plain dict."""
    if isinstance(cfg, config_class):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return config_class(**cfg)


__all__ = ["build_model", "EncoderDecoder", "EncoderOutput", "DecoderState", "count_parameters"]
