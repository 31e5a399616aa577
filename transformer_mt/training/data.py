"""What the trainer reads, ready on every rank: the prepared data, the pairs that fit the model, and
their batches.

`prepare_for_training` runs the data stage before training: rank 0 prepares `<output_dir>/data`
(or finds it prepared from the same inputs and settings, and loads it) while the other ranks wait
for it without the process group's collective timeout, since cleaning and encoding 4.5M pairs
takes longer than any sensible one. Then every rank opens the folder and checks that it holds the
data of rank 0: on several nodes without a shared filesystem each node must be given a copy.

The trainer then takes the pairs that fit the model (a dataset view, `within_positions`), cuts them
into token-budget batches for this rank (`TokenBatchSampler`) and hands them to a background
loader; the valid batches are cut once per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_mt.data.batching import TokenBatchSampler
from transformer_mt.data.binarize import PairSubset, ParallelDataset
from transformer_mt.data.loader import BatchLoader
from transformer_mt.data.prepare import DataConfig, PreparedData, load_prepared, prepare_data
from transformer_mt.models import EncoderDecoder
from transformer_mt.runtime import Runtime
from transformer_mt.training.config import TrainerConfig
from transformer_mt.training.run import TrainingError, no_shared_filesystem
from transformer_mt.training.validation import ValidationSet

PREPARE_THERE = "(or run the same `transformer-mt prepare` there) "


def prepare_for_training(runtime: Runtime, cfg: DataConfig, output_dir: Path) -> PreparedData:
    """`<output_dir>/data`, prepared by rank 0 and opened by every rank."""
    root = output_dir / "data"
    with runtime.main_first(f"prepare the data in {root}"):
        data = prepare_data(cfg, output_dir) if runtime.is_main else _open_prepared(runtime, output_dir)
    expected = runtime.broadcast_object(_identity(data))
    if _identity(data) != expected:
        raise TrainingError(
            f"rank {runtime.rank}: the prepared data in {root} is not rank 0's (another vocabulary or other "
            f"splits); " + no_shared_filesystem(root, or_else=PREPARE_THERE)
        )
    return data


def _open_prepared(runtime: Runtime, output_dir: Path) -> PreparedData:
    try:
        return load_prepared(output_dir)
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"rank {runtime.rank}: {err}; " + no_shared_filesystem(output_dir / "data", or_else=PREPARE_THERE)
        ) from None


def _identity(data: PreparedData) -> tuple[Any, Any]:
    """What two ranks' copies of the data must share: the vocabulary and every split's counts."""
    return data.manifest.get("vocab_sha256"), data.manifest.get("splits")


def training_pairs(data: PreparedData, model: EncoderDecoder) -> ParallelDataset | PairSubset:
    """The training pairs the model can take; an error when there is none (an empty epoch would make
    the loop spin for ever)."""
    train_set = data.dataset("train")
    pairs = train_set.within_positions(model.max_positions)
    if len(pairs) == 0:
        raise TrainingError(
            f"none of the {len(train_set):,} training pairs fits the model: every one has a side of "
            f"model.max_positions - 1 = {model.max_positions - 1} tokens or more (with EOS / BOS); "
            "raise model.max_positions or lower data.max_len"
            if len(train_set)
            else "the training split is empty after cleaning; check the data and data.max_len / min_len"
        )
    return pairs


def train_loader(pairs: ParallelDataset | PairSubset, cfg: TrainerConfig, runtime: Runtime) -> BatchLoader:
    """This rank's training batches, `update_freq` at a time, collated ahead in a background thread.
    An epoch is a whole number of updates, with the same batches for every split of the global batch
    into ranks x update_freq."""
    sampler = _sampler(pairs, cfg, runtime, shuffle=True, multiple_of=cfg.update_freq)
    return BatchLoader(
        pairs,
        sampler,
        update_freq=cfg.update_freq,
        pin_memory=runtime.device.type == "cuda",
        prefetch=cfg.prefetch_updates,
    )


def validation_set(
    data: PreparedData, model: EncoderDecoder, cfg: TrainerConfig, runtime: Runtime, decoding_cfg: Any
) -> ValidationSet:
    """The valid pairs that fit the model and this rank's batches of them, in length order."""
    pairs = data.dataset("valid").within_positions(model.max_positions)
    batches = _sampler(pairs, cfg, runtime, shuffle=False).epoch_batches(0)
    return ValidationSet(data, pairs, batches, decoding_cfg)


def _sampler(
    pairs: ParallelDataset | PairSubset, cfg: TrainerConfig, runtime: Runtime, *, shuffle: bool, multiple_of: int = 1
) -> TokenBatchSampler:
    return TokenBatchSampler(
        pairs.src_sizes,
        pairs.tgt_sizes,
        max_tokens=cfg.max_tokens,
        shuffle=shuffle,
        seed=cfg.seed,
        rank=runtime.rank,
        world_size=runtime.world_size,
        multiple_of=multiple_of,
    )


__all__ = ["prepare_for_training", "training_pairs", "train_loader", "validation_set"]
