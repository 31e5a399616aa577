"""Average the parameters of the last N step checkpoints of a run (or of a list of checkpoints).

The paper averages the last 5 checkpoints (written every 10 minutes) for base models and the last
20 for big ones. The result is a checkpoint for `evaluate` and `translate`."""

from __future__ import annotations

import sys
from pathlib import Path

from transformer_mt.checkpoint import average_checkpoints, save_checkpoint, step_checkpoints
from transformer_mt.cli.common import load_config


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
    save_checkpoint(average_checkpoints(paths), output)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) into {output}", file=sys.stderr)
