"""What a long job shows: a progress bar (step, loss, lr, tokens/s, ETA), TensorBoard scalars and a
plain text log in the output folder. Only the main rank writes; the others get a silent logger."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm


class TrainingLog:
    def __init__(self, output_dir: Path | None, *, total_steps: int, initial_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._writer = None
        self._file = None
        if not enabled:
            return
        assert output_dir is not None
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        self._file = open(output_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1.0,
            disable=None,  # no bar when stderr is not a terminal; the text log still says everything
        )

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        tqdm.write(message, file=sys.stderr)
        self._file.write(f"{stamp} {message}\n")
        self._file.flush()

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def advance(self, steps: int, postfix: dict[str, str]) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._writer.close()
        self._file.close()
