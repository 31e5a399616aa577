"""The typed configuration of every command, registered with Hydra's ConfigStore.

Each part of the system owns the dataclass of its part (`DataConfig` in data/prepare.py,
`TransformerConfig` in models/transformer.py, `TrainerConfig` in training/trainer.py, ...). Here they
are registered as the schemas that the YAML presets in `configs/` extend, and assembled into one root
config per command. Composition goes through Hydra's compose API, so a misspelt key, a wrong type or
an unknown preset is an error before any work starts, and no Hydra run folder is created (each DDP
rank would otherwise make its own).
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transformer_mt.data.prepare import DataConfig
from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.models.convs2s import ConvS2SConfig
from transformer_mt.models.lstm import LSTMConfig
from transformer_mt.models.transformer import TransformerConfig
from transformer_mt.serve.settings import ServerConfig
from transformer_mt.training.trainer import TrainerConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(Exception):
    """A configuration that cannot work; the message says what to change."""


@dataclass
class TrainRunConfig:
    """`prepare` and `train`: data, model, trainer and validation decoding, and where to write."""

    defaults: List[Any] = field(
        default_factory=lambda: [
            "_self_",
            {"data": "sample"},
            {"model": "transformer_tiny"},
            {"trainer": "default"},
            {"decoding": "default"},
            {"experiment": "sample"},
        ]
    )
    data: DataConfig = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    decoding: DecodingConfig = MISSING
    output_dir: str = "runs/sample"


def _decoding_defaults() -> List[Any]:
    return ["_self_", {"decoding": "default"}]


@dataclass
class EvaluateConfig:
    """`evaluate`: decode a test set and score it."""

    defaults: List[Any] = field(default_factory=_decoding_defaults)
    checkpoint: Any = None  # a path, or a list of paths for an ensemble
    split: str = "test"  # the prepared split beside the checkpoint's run, unless input/reference given
    input: Optional[str] = None
    reference: Optional[str] = None
    output: Optional[str] = None  # write the hypotheses here
    report: Optional[str] = None  # write scores, signatures and settings here as JSON
    tokenized_bleu: bool = False
    device: str = "auto"
    precision: str = "fp32"
    quantize: Optional[str] = None  # int8: int8 linear layers, for decoding on a CPU
    # How to decode: what the checkpoint's run validated with, and decoding.KEY=VALUE on top.
    decoding: DecodingConfig = MISSING


@dataclass
class TranslateConfig:
    """`translate`: raw text in, translations out, one line per line."""

    defaults: List[Any] = field(default_factory=_decoding_defaults)
    checkpoint: Any = None
    input: Optional[str] = None  # default: standard input
    output: Optional[str] = None  # default: standard output
    print_alignment: bool = False  # add each line's alignment from attention (decoding/alignment.py)
    device: str = "auto"
    precision: str = "fp32"
    quantize: Optional[str] = None  # as in evaluate
    # Lines read before translating them together (fairseq-interactive's --buffer-size). 1 answers
    # each line as it arrives, for a program on the other end of a pipe. Default: 1 on a terminal,
    # else 2000.
    buffer_size: Optional[int] = None
    decoding: DecodingConfig = MISSING  # as in evaluate


@dataclass
class ServeConfig:
    """`serve`: a translation service over one checkpoint (needs the `serve` extra)."""

    defaults: List[Any] = field(default_factory=_decoding_defaults)
    checkpoint: Optional[str] = None
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    port: int = 8080
    device: str = "auto"
    precision: str = "fp32"
    server: ServerConfig = field(default_factory=ServerConfig)  # batching window, limits, shutdown
    decoding: DecodingConfig = MISSING  # the defaults of requests, as in translate


@dataclass
class AverageConfig:
    """`average`: the mean of the parameters of several checkpoints (paper section 6.1)."""

    output_dir: Optional[str] = None  # take the newest `last` step checkpoints of this run
    last: int = 5
    checkpoints: Optional[List[str]] = None  # or these files
    output: Optional[str] = None  # default: <output_dir>/checkpoints/checkpoint_avg_last<N>.pt


@dataclass
class ExportConfig:
    """`export`: a checkpoint as a CTranslate2 model or a Hugging Face MarianMT folder."""

    checkpoint: Optional[str] = None
    format: Optional[str] = None  # ctranslate2 | huggingface
    output: Optional[str] = None  # the folder to write
    quantization: Optional[str] = None  # ctranslate2 only: int8, int8_float16, float16, ...
    force: bool = False  # replace an existing non-empty output folder


ROOTS = {
    "prepare": TrainRunConfig,
    "train": TrainRunConfig,
    "evaluate": EvaluateConfig,
    "translate": TranslateConfig,
    "average": AverageConfig,
    "serve": ServeConfig,
    "export": ExportConfig,
}


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="data", name="data_schema", node=DataConfig)
    store.store(group="model", name="transformer_schema", node=TransformerConfig)
    store.store(group="model", name="lstm_schema", node=LSTMConfig)
    store.store(group="model", name="convs2s_schema", node=ConvS2SConfig)
    store.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    store.store(group="decoding", name="decoding_schema", node=DecodingConfig)
    for name, node in ROOTS.items():
        store.store(name=f"{name}_root", node=node)


def compose_config(command: str, overrides: list[str]) -> DictConfig:
    """The composed (not yet instantiated) config of `command` with command-line overrides."""
    register()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=command):
            cfg = compose(config_name=f"{command}_root", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None
    if "defaults" in cfg:
        del cfg["defaults"]
    return cfg


def explicit_keys(overrides: list[str], node: str) -> set[str] | None:
    """The fields of config node `node` that the command line sets (`node.key=value`, with or
    without `+`), or None when it picks a whole preset for it (`node=name`: every field is set)."""
    keys: set[str] = set()
    for item in overrides:
        key = item.lstrip("+~").partition("=")[0]
        if key == node:
            return None
        if key.startswith(f"{node}."):
            keys.add(key[len(node) + 1 :].split(".")[0])
    return keys


def to_objects(cfg: DictConfig) -> Any:
    """Instantiate the dataclasses (running their validation)."""
    try:
        return OmegaConf.to_object(cfg)
    except (ValueError, TypeError, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None


def _one_line(err: BaseException) -> str:
    """Hydra's message and its causes on one line, without OmegaConf's location dump or search path."""
    parts: list[str] = []
    while err is not None:
        text = " ".join(str(err).split())
        text = text.split(" full_key:")[0].split(" Config search path:")[0]
        text = re.sub(r" \w+_schema\b", "", text)  # schemas are not presets a user can pick
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__
    return ": ".join(parts)
