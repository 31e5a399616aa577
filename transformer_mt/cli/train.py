"""Train a model on a prepared (or to-be-prepared) corpus.

Resumes from <output_dir>/checkpoints/checkpoint_last.pt when it exists (trainer.resume=false starts
over; trainer.init_from=CKPT starts a new run from another run's weights). Launch with
`torchrun --nproc_per_node=N -m transformer_mt train ...` for DDP."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from transformer_mt.cli.common import load_config
from transformer_mt.run_folder import own_run_folder
from transformer_mt.runtime import init_runtime, shutdown
from transformer_mt.training.data import prepare_for_training
from transformer_mt.training.trainer import train


def main(overrides: list[str], show_help: bool) -> int | None:
    run = load_config("train", overrides, show_help, __doc__)
    if run is None:
        return
    resolved = asdict(run)
    resolved.pop("defaults", None)
    cfg, output_dir = run.trainer, Path(run.output_dir)
    main_rank = int(os.environ.get("RANK", 0)) == 0  # before the process group: a refused lock waits for nothing
    with own_run_folder(run.output_dir, "train", take=main_rank):  # one process writes a run folder
        runtime = init_runtime(device=cfg.device, precision=cfg.precision, timeout_s=cfg.dist_timeout_s)
        try:
            if runtime.is_main:
                output_dir.mkdir(parents=True, exist_ok=True)
                (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved), encoding="utf-8")
            data = prepare_for_training(runtime, run.data, output_dir)
            result = train(runtime, data, run.model, cfg, run.decoding, output_dir, run_config=resolved)
        finally:
            shutdown(runtime)
    return result["exit_status"]  # 128 + N after a stop signal (checkpoint_last.pt written), else 0
