"""The typed configuration of every command, registered with Hydra's ConfigStore.

Each part of the system owns the dataclass of its part (`DataConfig` in data/prepare.py,
`TransformerConfig` in models/transformer.py, `TrainerConfig` in training/config.py, ...). Here they
are registered as the schemas that the YAML presets in `configs/` extend, and assembled into one root
config per command. Composition goes through Hydra's compose API, so a misspelt key, a wrong type or
an unknown preset is an error before any work starts, and no Hydra run folder is created (each DDP
rank would otherwise make its own).
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from transformer_mt.data.prepare import DataConfig
from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.models.convs2s import ConvS2SConfig
from transformer_mt.models.lstm import LSTMConfig
from transformer_mt.models.transformer import TransformerConfig
from transformer_mt.serve.settings import ServerConfig
from transformer_mt.training.config import TrainerConfig

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
    tokenized_bleu: bool = False  # also the paper's BLEU (Moses tokenizer, compound splitting; needs sacremoses)
    # The reference's language, for sacreBLEU and the Moses tokenizer; default: the prepared data's,
    # or the reference file's suffix (newstest2014.de).
    target_lang: Optional[str] = None
    device: str = "auto"
    precision: str = "fp32"
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

    def __post_init__(self) -> None:
        if self.last < 1:
            raise ValueError(f"last={self.last} must be at least 1 (the number of checkpoints to average)")


ROOTS = {
    "prepare": TrainRunConfig,
    "train": TrainRunConfig,
    "evaluate": EvaluateConfig,
    "translate": TranslateConfig,
    "average": AverageConfig,
    "serve": ServeConfig,
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
    """The composed (not yet instantiated) config of `command` with command-line overrides.

    A key that no schema has is refused with the closest known key, whether Hydra refuses it
    (`trainer.foo=1`) or would add it to a node that nothing reads (`+trainer.foo=1`, `++foo=1`)."""
    try:
        cfg = _compose(command, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
            typed = _typed_key(overrides, cause.full_key)
            rest = [item for item in overrides if _override_key(item) != typed]
            raise ConfigError(unknown_key_message(typed, _known_keys(_compose_or_defaults(command, rest)))) from None
        raise ConfigError(_one_line(err)) from None
    unknown = _unknown_keys(cfg)
    if unknown:
        typed = _typed_key(overrides, unknown[0])
        raise ConfigError(unknown_key_message(typed, _known_keys(cfg))) from None
    return cfg


def _compose(command: str, overrides: list[str]) -> DictConfig:
    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=command):
        cfg = compose(config_name=f"{command}_root", overrides=overrides)
    if "defaults" in cfg:
        del cfg["defaults"]
    return cfg


def _compose_or_defaults(command: str, overrides: list[str]) -> DictConfig:
    """The config without the refused override, for its known keys (the defaults if that fails too)."""
    try:
        return _compose(command, overrides)
    except (HydraException, OmegaConfBaseException):
        return _compose(command, [])


def _override_key(item: str) -> str:
    return item.lstrip("+~").partition("=")[0]


def _typed_key(overrides: list[str], full_key: str) -> str:
    """The key as the command line gave it: `foo.bar` for an unknown `foo` from `+foo.bar=1`."""
    for item in overrides:
        key = _override_key(item)
        if key == full_key or key.startswith(f"{full_key}."):
            return key
    return full_key


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of `node` (recursively) that its schema dataclass does not declare: added with `+`."""
    schema = OmegaConf.get_type(node)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key in node:
        if declared is not None and key not in declared:
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            found += _unknown_keys(node[key], f"{prefix}{key}.")
    return found


def _known_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every declared key of `node`, nodes and leaves, as dotted paths in schema order."""
    schema = OmegaConf.get_type(node)
    declared = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else list(node)
    keys = []
    for key in declared:
        if key == "defaults" or key not in node:
            continue
        keys.append(f"{prefix}{key}")
        if not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            keys += _known_keys(node[key], f"{prefix}{key}.")
    return keys


def unknown_key_message(key: str, known: list[str]) -> str:
    """`unknown key trainer.max_step (did you mean trainer.max_steps?)`, or the node's keys when no
    known key is close. A key that lives in another node (`beam`, now `decoding.beam`) is found by
    its last part."""
    leaf = key.rpartition(".")[2]
    same_leaf = [k for k in known if k.rpartition(".")[2] == leaf and k != key]
    if same_leaf:
        return f"unknown key {key} (did you mean {' or '.join(same_leaf[:3])}?)"
    parts = key.split(".")
    parent = next((p for p in (".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)) if p in known), "")
    siblings = [k for k in known if k.rpartition(".")[0] == parent]

    def closeness(candidate: str) -> float:
        other = candidate.rpartition(".")[2]
        matcher = difflib.SequenceMatcher(None, leaf, other)
        block = matcher.find_longest_match(0, len(leaf), 0, len(other)).size
        return max(matcher.ratio(), 0.9 * block / len(leaf) if len(leaf) >= 4 else 0.0)

    # The closest key beside it, else a close one in another node (`trainer.lenpn`: decoding.lenpen).
    for candidates, cutoff in ((siblings, 0.6), (known, 0.8)):
        best = max(candidates, key=closeness, default=None)
        if best is not None and closeness(best) >= cutoff:
            return f"unknown key {key} (did you mean {best}?)"
    where = f"{parent}'s keys" if parent else "known keys"
    return f"unknown key {key}; {where}: {', '.join(k.rpartition('.')[2] for k in siblings)}"


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
