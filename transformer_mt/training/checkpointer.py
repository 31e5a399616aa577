"""Where a run's checkpoints go, and which one is the last good one.

`checkpoint_<step>.pt` and `checkpoint_last.pt` are written every `trainer.save_every` updates and
when training stops, `checkpoint_best.pt` at each validation that improves the metric; the newest
`trainer.keep_last` step files are kept. What a training checkpoint holds is `resume.py`'s part,
the file itself (atomic writes, safe loading) `checkpoint.py`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_mt import checkpoint as ckpt
from transformer_mt.data.vocab import Vocabulary


class Checkpointer:
    """Writes one run's checkpoints (rank 0 writes; every rank keeps the same bookkeeping)."""

    def __init__(
        self,
        directory: Path,
        *,
        keep_last: int,
        model_config: dict[str, Any],
        vocab: Vocabulary,
        run_config: dict[str, Any],
    ) -> None:
        self.directory, self.keep_last = directory, keep_last
        self.last, self.best = directory / "checkpoint_last.pt", directory / "checkpoint_best.pt"
        # What every checkpoint of the run carries besides the state: enough for `translate`.
        self.model_config, self.vocab, self.run_config = model_config, vocab, run_config
        self.saved_step: int | None = None  # the step in checkpoint_last.pt (None before any)

    def last_good(self) -> str:
        """The checkpoint to resume from after a failure, in words."""
        if self.saved_step is None:
            return "none (no checkpoint written yet)"
        return f"{self.last} (step {self.saved_step})"

    def write(self, snapshot: dict[str, Any] | None, *, tag: str, step: int) -> None:
        """Write `snapshot` as the `tag` ("step" or "best") checkpoint of `step`; ranks other than 0
        pass None and write nothing."""
        names = [self.best.name] if tag == "best" else [f"checkpoint_{step}.pt", self.last.name]
        if snapshot is not None:
            for name in names:
                ckpt.save_checkpoint(snapshot, self.directory / name)
            ckpt.rotate(self.directory, self.keep_last)
        if tag == "step":
            self.saved_step = step

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of writes that a crash cut short (call on rank 0 only)."""
        return ckpt.remove_partial_writes(self.directory)


__all__ = ["Checkpointer"]
