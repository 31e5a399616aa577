"""Where a run starts from, what its checkpoints hold, and how a run continues from one exactly.

A training checkpoint is the model, its config as a plain dict and the sentencepiece model (enough
for `translate`), plus everything the loop needs to go on as if it had never stopped: the optimiser,
the loss scaler, the position in the epoch's batches, each rank's RNG state (dropout masks), the
loop's counters (`TrainState`) and the cost so far. `checkpoint.py` writes and reads the file;
this module decides what goes into it and puts it back.

A run starts in one of three ways (`start`):
- resume: `checkpoint_last.pt` exists (and `trainer.resume=true`). Rank 0 decides, and every rank
  checks that the file it reads is the one rank 0 reads (its step and size): a rank that cannot
  read it, or reads another (several nodes without a shared filesystem), fails the job naming the
  path, instead of training on from other weights.
- `trainer.init_from=CKPT`: a new run from another run's weights (fine-tuning), with a fresh
  optimiser, schedule, batch order and counters, as fairseq's `--restore-file` with
  `--reset-optimizer` or OpenNMT's `-train_from` without its state. Once the run has saved its own
  `checkpoint_last.pt`, running the same command resumes from that instead.
- fresh.

The sampler position is saved in global terms (batches of the epoch's global order that all ranks
together consumed), so a run resumes exactly on any split of the same global batch into ranks x
update_freq. RNG streams cannot carry over to another number of ranks: the log says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_mt import checkpoint as ckpt
from transformer_mt.data.vocab import Vocabulary, vocabulary_difference
from transformer_mt.training.run import TrainingError, TrainingRun, no_shared_filesystem

RESUMABLE = ("model", "model_config", "sentencepiece", "optimizer", "scaler", "sampler", "rng", "step")
RESUMABLE += ("train_state", "cost")


def start(run: TrainingRun) -> list[str]:
    """Put `run` where it starts (resume, `trainer.init_from`, or fresh weights) and seed the ranks'
    dropout streams. Returns what to log about it."""
    cfg, runtime, checkpointer = run.cfg, run.runtime, run.checkpointer
    notes = []
    if runtime.is_main and (partial := checkpointer.remove_partial_writes()):  # left by a crash
        notes.append(f"removed {len(partial)} temporary file(s) of checkpoint writes cut short: {partial}")
    resuming = runtime.broadcast_object(cfg.resume and checkpointer.last.exists() if runtime.is_main else None)
    if resuming:
        saved = load_on_every_rank(run, checkpointer.last, role="resumes from")
        notes.append(f"resumed from {checkpointer.last} at step {saved['step']}")
        return notes + restore(run, saved, checkpointer.last)
    if cfg.init_from:
        path = Path(cfg.init_from)
        notes += init_weights(run, load_on_every_rank(run, path, role="starts from (trainer.init_from)"), path)
    if runtime.rank:
        torch.manual_seed(cfg.seed + runtime.rank)  # distinct dropout masks per rank
    return notes


def load_on_every_rank(run: TrainingRun, path: Path, *, role: str) -> dict[str, Any]:
    """The checkpoint `path`, loaded on every rank and checked to be the file rank 0 loaded."""
    runtime = run.runtime
    try:
        saved = ckpt.load_checkpoint(path)
        mine: Any = (saved.get("step"), path.stat().st_size)
    except ckpt.CheckpointError as err:
        if runtime.is_main:
            raise
        saved, mine = {}, str(err)
    expected = runtime.broadcast_object(mine)
    if mine != expected:
        step, size = expected
        found = mine if isinstance(mine, str) else f"it holds step {mine[0]} in {mine[1]:,} bytes there"
        raise TrainingError(
            f"rank {runtime.rank} cannot read {path}, the checkpoint rank 0 {role} (step {step}, {size:,} bytes): "
            f"{found}; " + no_shared_filesystem(path.parent)
        )
    return saved


def restore(run: TrainingRun, saved: dict[str, Any], path: Path) -> list[str]:
    """Put the state of checkpoint `saved` (read from `path`) back into `run`, after checking that it
    was made by the same model with the same vocabulary. Returns notes for the log."""
    missing = [key for key in RESUMABLE if key not in saved]
    if missing:
        raise TrainingError(
            f"{path} cannot be resumed from: it has no {', '.join(missing)} entry (an averaged or foreign "
            "checkpoint?); set trainer.resume=false to start over, or trainer.init_from to start from its weights"
        )
    checkpointer = run.checkpointer
    _check_same_model(saved["model_config"], checkpointer.model_config, path)
    _check_vocabulary(saved, checkpointer.vocab, path, fix="choose another output_dir or set trainer.resume=false")
    _load_weights(run, saved, path, fix="set trainer.resume=false")
    run.optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"]:  # empty when saved by an fp32/bf16 run: an fp16 resume starts a fresh scale
        run.scaler.load_state_dict(saved["scaler"])
    for key, value in saved["train_state"].items():
        setattr(run.state, key, value)
    run.cost.load_state_dict(saved["cost"])
    checkpointer.saved_step = saved["step"]
    return _restore_position(run, saved) + _restore_rng(run, saved["rng"], saved["step"])


def init_weights(run: TrainingRun, saved: dict[str, Any], path: Path) -> list[str]:
    """Start from the weights of another run's checkpoint (`trainer.init_from`); all else is fresh."""
    missing = [key for key in ("model", "model_config", "sentencepiece") if key not in saved]
    if missing:
        raise TrainingError(f"trainer.init_from={path}: the checkpoint has no {', '.join(missing)} entry")
    fix = "prepare the data with the checkpoint's vocabulary, or leave trainer.init_from out"
    _check_vocabulary(saved, run.checkpointer.vocab, path, fix=fix)
    _load_weights(run, saved, path, fix="trainer.init_from needs the same architecture and sizes")
    differing = _differing_keys(saved["model_config"], run.checkpointer.model_config)
    return [
        f"initialised from {path} (step {saved.get('step')} of its run): its weights, with a fresh optimiser, "
        "learning-rate schedule, batch order and counters"
        + (f"; its model config differs in {differing}" if differing else "")
    ]


def training_snapshot(run: TrainingRun) -> dict[str, Any] | None:
    """The checkpoint of `run` on rank 0, None on the others. A collective: every rank calls it
    (each rank's RNG state is gathered to rank 0)."""
    runtime, checkpointer = run.runtime, run.checkpointer
    rng = runtime.gather_objects(_rng_state(run))
    if not runtime.is_main:
        return None
    return {
        "format": ckpt.FORMAT,
        "model": run.model.state_dict(),
        "model_config": checkpointer.model_config,
        "vocab_size": run.model.vocab_size,
        "sentencepiece": checkpointer.vocab.to_bytes(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "sampler": run.loader.global_state(),  # what the loop consumed, not what the loader prefetched
        "rng": rng,
        "step": run.state.step,
        "train_state": dict(vars(run.state)),
        "cost": run.cost.state_dict(),
        "config": checkpointer.run_config,
    }


def _check_same_model(saved: dict[str, Any], ours: dict[str, Any], path: Path) -> None:
    if saved != ours:
        raise TrainingError(
            f"{path} is a checkpoint of another model: its config differs in {_differing_keys(saved, ours)}; "
            "choose another output_dir or set trainer.resume=false"
        )


def _differing_keys(saved: dict[str, Any], ours: dict[str, Any]) -> str:
    """`key (checkpoint A, this run B), ...` for the model-config keys whose values differ."""
    keys = sorted(k for k in saved.keys() | ours.keys() if saved.get(k) != ours.get(k))
    return ", ".join(f"{k} (checkpoint {saved.get(k)!r}, this run {ours.get(k)!r})" for k in keys)


def _check_vocabulary(saved: dict[str, Any], vocab: Vocabulary, path: Path, *, fix: str) -> None:
    if difference := vocabulary_difference(saved.get("sentencepiece"), vocab):  # same size: trains on garbage
        raise TrainingError(
            f"{path} was trained with another sentencepiece vocabulary than the one prepared in the output_dir "
            f"({difference}; did the data or data.vocab_size change?); {fix}"
        )


def _load_weights(run: TrainingRun, saved: dict[str, Any], path: Path, *, fix: str) -> None:
    try:
        run.model.load_state_dict(saved["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(f"{path} does not fit the model ({first}); {fix}") from None


def _restore_position(run: TrainingRun, saved: dict[str, Any]) -> list[str]:
    """Continue the batches where the checkpoint's run left them, on this run's ranks."""
    position, notes = dict(saved["sampler"]), []
    if "batches_done" not in position:  # written before positions were global: rank 0's own batches
        ranks = len(saved["rng"])
        position = {
            "epoch": position["epoch"],
            "batches_done": position["position"] * ranks,
            "epoch_batches": len(run.loader.sampler.batches),
        }
        notes.append(f"the checkpoint's batch position is rank 0's of {ranks} rank(s): read as {position}")
    if not run.loader.load_global_state(position):
        notes.append(
            f"the checkpoint's run cut its epochs into {position['epoch_batches']} batches and stopped "
            f"after {position['batches_done']}, this run cuts them into {len(run.loader.sampler.batches)} "
            f"updates of {run.runtime.world_size} rank(s) x update_freq {run.cfg.update_freq} (another "
            "max_tokens or global batch): it goes on from the same fraction of the epoch, so a few pairs of "
            "this epoch may be skipped or seen twice"
        )
    return notes


def _restore_rng(run: TrainingRun, rng: list[dict[str, Any]], step: int) -> list[str]:
    runtime = run.runtime
    if len(rng) == runtime.world_size:
        torch.set_rng_state(rng[runtime.rank]["torch"])
        if runtime.device.type == "cuda" and "cuda" in rng[runtime.rank]:
            torch.cuda.set_rng_state(rng[runtime.rank]["cuda"], runtime.device)
        return []
    torch.manual_seed(step * 1000 + runtime.rank)  # a new world size: fresh, distinct streams
    return [
        f"the checkpoint holds the RNG streams of {len(rng)} rank(s) and this run has {runtime.world_size}: "
        "the dropout masks from here on are drawn from fresh streams (seeded by the step and the rank), "
        f"so with dropout the run is not bit-identical to one that kept {len(rng)} rank(s)"
    ]


def _rng_state(run: TrainingRun) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if run.runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.runtime.device)
    return state


__all__ = ["start", "restore", "init_weights", "training_snapshot", "load_on_every_rank"]
