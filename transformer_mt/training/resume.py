"""What a checkpoint holds of a training run, and how a run continues from one exactly.

A training checkpoint is the model, its config as a plain dict and the sentencepiece model (enough
for `translate`), plus everything the loop needs to go on as if it had never stopped: the optimiser,
the loss scaler, the sampler's position in its epoch, each rank's RNG state (dropout masks), the
loop's counters (`TrainState`) and the cost so far. `checkpoint.py` writes and reads the file;
this module decides what goes into it and puts it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from transformer_mt import checkpoint as ckpt
from transformer_mt.data.batching import TokenBatchSampler
from transformer_mt.data.vocab import Vocabulary, vocabulary_difference
from transformer_mt.models import EncoderDecoder
from transformer_mt.runtime import Runtime
from transformer_mt.training.cost import TrainingCost


class TrainingError(Exception):
    """Training cannot go on; the message says why and where to resume from."""


@dataclass
class TrainState:
    """What the loop carries between updates (and into checkpoints) besides the modules."""

    step: int = 0
    best_metric: float | None = None
    bad_validations: int = 0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0


@dataclass
class TrainingRun:
    """The objects of one run whose state a checkpoint carries, and the facts it is checked against."""

    model: EncoderDecoder  # unwrapped: no DDP or compile prefixes in the saved names
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: TokenBatchSampler
    state: TrainState
    cost: TrainingCost
    model_config: dict[str, Any]
    vocab: Vocabulary
    run_config: dict[str, Any]


def training_snapshot(run: TrainingRun, runtime: Runtime) -> dict[str, Any] | None:
    """The checkpoint of `run` on rank 0, None on the others. A collective: every rank calls it
    (each rank's RNG state is gathered to rank 0)."""
    rng = runtime.gather_objects(_rng_state(runtime))
    if not runtime.is_main:
        return None
    return {
        "format": ckpt.FORMAT,
        "model": run.model.state_dict(),
        "model_config": run.model_config,
        "vocab_size": run.model.vocab_size,
        "sentencepiece": run.vocab.to_bytes(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "rng": rng,
        "step": run.state.step,
        "train_state": dict(vars(run.state)),
        "cost": run.cost.state_dict(),
        "config": run.run_config,
    }


def restore(run: TrainingRun, runtime: Runtime, saved: dict[str, Any], path: Any) -> None:
    """Put the state of checkpoint `saved` (read from `path`) back into `run`, after checking that
    it was made by the same model with the same vocabulary."""
    if saved["model_config"] != run.model_config:
        raise TrainingError(
            "the output_dir holds a checkpoint of a different model "
            f"({saved['model_config']} vs {run.model_config}); choose another output_dir or set trainer.resume=false"
        )
    if difference := vocabulary_difference(saved.get("sentencepiece"), run.vocab):  # same size: trains on garbage
        raise TrainingError(
            f"{path} was trained with another sentencepiece vocabulary than the one prepared in the output_dir "
            f"({difference}; did the data or data.vocab_size change?); choose another output_dir or set trainer.resume=false"
        )
    try:
        run.model.load_state_dict(saved["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(f"{path} does not fit the model ({first}); set trainer.resume=false") from None
    run.optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"]:  # empty when saved by an fp32/bf16 run: an fp16 resume starts a fresh scale
        run.scaler.load_state_dict(saved["scaler"])
    run.sampler.load_state_dict(saved["sampler"])
    for key, value in saved["train_state"].items():
        setattr(run.state, key, value)
    run.cost.load_state_dict(saved["cost"])
    rng = saved["rng"]
    if len(rng) == runtime.world_size:
        torch.set_rng_state(rng[runtime.rank]["torch"])
        if runtime.device.type == "cuda" and "cuda" in rng[runtime.rank]:
            torch.cuda.set_rng_state(rng[runtime.rank]["cuda"], runtime.device)
    else:
        torch.manual_seed(saved["step"] * 1000 + runtime.rank)  # a new world size: fresh, distinct streams


def _rng_state(runtime: Runtime) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


__all__ = ["TrainingError", "TrainState", "TrainingRun", "training_snapshot", "restore"]
