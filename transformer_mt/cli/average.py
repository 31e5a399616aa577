"""Average the parameters of the last N step checkpoints of a run (or of a list of checkpoints).

The paper averages the last 5 checkpoints (written every 10 minutes) for base models and the last
20 for big ones. The result is a checkpoint for `evaluate` and `translate`, not for resuming: it
never goes under a name that training uses (checkpoint_last.pt, checkpoint_best.pt,
checkpoint_<step>.pt) nor over a training checkpoint. The checkpoints must share the vocabulary and
the model's tensors. It reads finished checkpoints, so it runs beside a training run."""

from __future__ import annotations

import sys
from pathlib import Path

from transformer_mt.checkpoint import (
    STEP_FILE,
    CheckpointError,
    average_checkpoints,
    is_training_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from transformer_mt.cli.common import load_config

TRAINING_NAMES = ("checkpoint_last.pt", "checkpoint_best.pt")  # and checkpoint_<step>.pt


def main(overrides: list[str], show_help: bool) -> None:
    cfg = load_config("average", overrides, show_help, __doc__)
    if cfg is None:
        return
    if cfg.checkpoints:
        paths = [Path(p) for p in cfg.checkpoints]
        default_output = paths[-1].parent / f"checkpoint_avg{len(paths)}.pt"
    elif cfg.output_dir:
        directory = Path(cfg.output_dir) / "checkpoints"
        found = step_checkpoints(directory)
        if not found:
            raise ValueError(f"no checkpoint_<step>.pt files in {directory}")
        paths = found[-cfg.last :]
        default_output = directory / f"checkpoint_avg_last{cfg.last}.pt"
    else:
        raise ValueError("give output_dir=RUN (averages its last N checkpoints) or checkpoints=[A,B,...]")
    output = Path(cfg.output) if cfg.output else default_output
    _check_output(output)
    if not cfg.checkpoints and len(paths) < cfg.last:
        print(
            f"transformer-mt average: warning: {paths[0].parent} holds {len(paths)} step checkpoint(s), "
            f"fewer than last={cfg.last}; averaging those {len(paths)}",
            file=sys.stderr,
        )
    save_checkpoint(average_checkpoints(paths), output)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) into {output}", file=sys.stderr)


def _check_output(output: Path) -> None:
    """Refuse an output that training would take for its own (resume from it, rotate it away) or
    that would replace a training checkpoint or a file that is not a checkpoint."""
    if output.name in TRAINING_NAMES or STEP_FILE.fullmatch(output.name):
        raise ValueError(
            f"output={output}: {output.name} is a name training uses for its own checkpoints (it would "
            "resume from it or delete it); choose another name, e.g. checkpoint_avg.pt"
        )
    if output.is_dir():
        raise ValueError(f"output={output} is a directory; give the checkpoint file to write")
    if not output.exists():
        return
    try:
        existing = load_checkpoint(output)
    except CheckpointError:
        raise ValueError(f"output={output} exists and is not a checkpoint; choose another output") from None
    if is_training_checkpoint(existing):
        raise ValueError(
            f"output={output} is a training checkpoint (it holds an optimiser state that train resumes "
            "from); choose another output"
        )
