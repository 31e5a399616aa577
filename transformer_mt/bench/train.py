"""`transformer-mt bench train`: training tokens/s of our step against other frameworks.

One training step is forward + backward + Adam update on one synthetic batch (default 128 sentences
of 32 source and 32 target tokens, a 32000-entry vocabulary, no padding). For each model preset and
precision it measures, in the same run and on the same batch shape:

- transformer-mt: the trainer's own update (`training.step.train_step`: autocast, label-smoothed
  cross-entropy, backward, the update's all_reduce of its scalars, gradient normalisation and norm,
  Adam from `build_adam`); with compile=true also under `torch.compile`, as `trainer.compile=true`
  runs it;
- torch: a Transformer of equal size written with `torch.nn.Transformer` (peer_scripts/torch_train.py);
- JoeyNMT 2.3.0 and Eole 0.6.4: each framework's model built by its own model builder from a config
  dict, with its own loss and Adam, in a virtual environment of its own (see `peers.py`);
- fairseq 0.12.2: reported as not runnable on Python 3.11+, with the reason.

Peers exist for the Transformer presets only. `model_overrides.KEY=VALUE` (e.g.
`model_overrides.attention_window=4`) changes fields of every preset for our step: each preset is then
measured as it is and with the overrides, in the same run, and the overridden row's `vs preset` is its
tokens/s over the preset's own (peers build the presets as they are, so they are measured against
the plain rows only). Throughput is target tokens per second (the median
step). FLOPs per step are 3 x the model's analytic `forward_flops` (backward costs about twice the
forward), the same count for every system of one size; model FLOPs utilisation (MFU) divides that
rate by the peak of a large matrix product measured in the same run, in the same precision.
The issue's targets are reported (never asserted): on a CPU our fp32 step >= 1.1x and our bf16 step
>= 2.5x the fastest peer's fp32 step; on a GPU bf16 MFU >= 40% (transformer_base), 50% (transformer_big).
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from transformer_mt.bench import common
from transformer_mt.bench.peer_scripts import harness, torch_train
from transformer_mt.bench.peers import PeerError, run_peer
from transformer_mt.data.batching import Batch
from transformer_mt.models import build_model, count_parameters, model_config
from transformer_mt.models.transformer import TransformerConfig
from transformer_mt.runtime import PRECISIONS, Runtime, resolve_device
from transformer_mt.training.config import TrainerConfig
from transformer_mt.training.optim import build_adam
from transformer_mt.training.run import TrainingRun
from transformer_mt.training.step import train_step

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
PAD, BOS, EOS = 0, 2, 3  # docs/design.md
SYSTEMS = ("torch", "joeynmt", "eole", "fairseq")  # the peers, in table order
NAMES = {
    "ours": "transformer-mt",
    "torch": "torch.nn.Transformer",
    "joeynmt": "JoeyNMT 2.3.0",
    "eole": "Eole 0.6.4",
    "fairseq": "fairseq 0.12.2",
}


@dataclass
class TrainBenchConfig:
    """Options of `bench train` (key=value on the command line)."""

    models: List[str] = field(default_factory=lambda: ["transformer_base"])  # presets in configs/model/
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # model fields changed; measured beside the preset
    precisions: List[str] = field(default_factory=lambda: ["fp32", "bf16"])
    peers: List[str] = field(default_factory=lambda: list(SYSTEMS))  # any of torch, joeynmt, eole, fairseq
    batch_size: int = 128  # sentences per batch
    src_len: int = 32  # source tokens per sentence (the last is EOS)
    tgt_len: int = 32  # target tokens per sentence (the last is EOS)
    vocab_size: int = 32000
    label_smoothing: float = 0.1
    warmup: int = 2  # untimed steps first
    steps: int = 5  # timed steps; the median is reported
    compile: bool = False  # also measure our step under torch.compile (a second row)
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch CPU threads for every system (default: torch's own choice)
    peak_seconds: float = 1.0  # how long each peak matmul probe runs
    peer_timeout_s: float = 3600.0  # per peer measurement (the first one installs the peer)
    seed: int = 1
    output: Optional[str] = None  # write the results here as JSON

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "src_len", "tgt_len", "steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.src_len < 2 or self.tgt_len < 2:
            problems.append("src_len and tgt_len must be at least 2 (a token and EOS)")
        if self.vocab_size < 5:
            problems.append(f"vocab_size={self.vocab_size} must leave room for 4 special ids and words")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            problems.append(f"precisions={list(self.precisions)}: each must be one of fp32, bf16, fp16")
        bad = [p for p in self.peers if p not in SYSTEMS]
        if bad:
            problems.append(f"peers={bad} unknown; choose from {', '.join(SYSTEMS)} (or peers=[] for none)")
        for name in self.models:
            if not (MODEL_CONFIGS / f"{name}.yaml").exists():
                known = sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml"))
                problems.append(f"no model preset {name!r}; presets: {', '.join(known)}")
            elif self.model_overrides:
                try:
                    model_config({**load_preset(name), **self.model_overrides})
                except (TypeError, ValueError) as err:
                    problems.append(f"model_overrides on {name}: {err}")
        if problems:
            raise ValueError("bench train: " + "; ".join(problems))


def load_preset(name: str) -> dict[str, Any]:
    """The model config of `configs/model/<name>.yaml` as a plain dict (its `defaults` list dropped)."""
    cfg = OmegaConf.to_container(OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml"), resolve=True)
    schemas = [d for d in cfg.pop("defaults", []) if isinstance(d, str) and d.endswith("_schema")]
    if "arch" not in cfg:  # the presets extend `<arch>_schema` (config.py), whose default sets it
        if not schemas:
            raise ValueError(f"model preset {name!r} sets no arch and extends no <arch>_schema")
        cfg["arch"] = schemas[0].removesuffix("_schema")
    return cfg


def step_args(cfg: TrainBenchConfig, model_cfg: dict[str, Any], precision: str, device: torch.device) -> dict:
    """What every system's measurement receives: batch shape, timing, and (for peers) the model size."""
    args = {
        "batch_size": cfg.batch_size,
        "src_len": cfg.src_len,
        "tgt_len": cfg.tgt_len,
        "vocab_size": cfg.vocab_size,
        "label_smoothing": cfg.label_smoothing,
        "warmup": cfg.warmup,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "device": str(device),
        "precision": precision,
    }
    if model_cfg["arch"] == "transformer":
        size = TransformerConfig(**model_cfg)
        keys = ("d_model", "ffn_dim", "heads", "encoder_layers", "decoder_layers", "dropout", "norm")
        args.update({key: getattr(size, key) for key in keys})
        args["max_positions"] = max(cfg.src_len, cfg.tgt_len) + 1
    return args


def step_flops(cfg: TrainBenchConfig, model_cfg: dict[str, Any]) -> int:
    """Analytic FLOPs of one forward pass of the preset over the batch (a model on the meta device)."""
    with torch.device("meta"):
        model = build_model(model_cfg, vocab_size=cfg.vocab_size, pad_id=PAD)
    return model.forward_flops(cfg.batch_size, cfg.src_len, cfg.tgt_len)


def measure_ours(
    cfg: TrainBenchConfig,
    model_cfg: dict[str, Any],
    precision: str,
    device: torch.device,
    compiled: bool = False,
) -> dict:
    """Seconds per step of the trainer's own update on the synthetic batch (under torch.compile if asked)."""
    args = step_args(cfg, model_cfg, precision, device)
    harness.setup(args)
    model = build_model(model_cfg, vocab_size=cfg.vocab_size, pad_id=PAD).to(device)
    run = TrainingRun(  # the parts of a run that `train_step` uses
        cfg=TrainerConfig(
            label_smoothing=cfg.label_smoothing,
            precision=precision,
            device=device.type,
            max_tokens=cfg.batch_size * max(cfg.src_len, cfg.tgt_len),
            schedule="constant",
            lr=1e-4,
        ),
        runtime=Runtime(rank=0, world_size=1, local_rank=0, device=device, precision=precision),
        model=model,
        step_model=torch.compile(model) if compiled else model,  # as trainer.compile=true does
        optimizer=build_adam(model, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, device=device),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
    )
    tensors = harness.synthetic_batch(args, torch.device("cpu"), bos=BOS, eos=EOS)
    batch = Batch(
        src_tokens=tensors["src"],
        src_lengths=torch.full((cfg.batch_size,), cfg.src_len),
        prev_tokens=tensors["prev"],
        target=tensors["target"],
        ids=torch.arange(cfg.batch_size),
        ntokens=cfg.batch_size * cfg.tgt_len,
    )
    if device.type == "cuda":
        batch = batch.pin_memory()  # as the trainer's loader would hand it over

    def step() -> None:
        train_step(run, [batch])

    seconds = harness.time_steps(step, args, device)
    return {"step_seconds": seconds, "params": count_parameters(model), "model": model}


def measure_peer(system: str, args: dict[str, Any], cfg: TrainBenchConfig) -> dict:
    if system == "torch":  # in our own process: only torch is needed
        return torch_train.measure(args)
    return run_peer(system, f"{system}_train.py", args, timeout_s=cfg.peer_timeout_s, log=_log)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(cfg: TrainBenchConfig) -> dict[str, Any]:
    """Measure everything `cfg` asks for; the JSON payload (rows, peaks, environment, settings)."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    environment = common.environment(device)  # dated when the run starts
    peaks = {p: common.measure_peak_flops(device, p, seconds=cfg.peak_seconds) for p in cfg.precisions}
    _log("peak matmul FLOP/s: " + ", ".join(f"{p} {v / 1e9:.0f} G" for p, v in peaks.items()))
    rows: list[dict[str, Any]] = []
    for preset in cfg.models:
        model_cfg = load_preset(preset)
        variants = [(preset, model_cfg)]  # the preset as it is first: the overridden row's reference
        if cfg.model_overrides:
            variants.append((variant_name(preset, cfg.model_overrides), {**model_cfg, **cfg.model_overrides}))
        variant_flops = [3 * step_flops(cfg, variant_cfg) for _, variant_cfg in variants]
        flops = variant_flops[0]
        for precision in cfg.precisions:
            args = step_args(cfg, model_cfg, precision, device)
            plain: dict[bool, dict[str, Any]] = {}  # the preset's own row of ours, by `compiled`
            for (name, variant_cfg), ours_flops in zip(variants, variant_flops, strict=True):
                for compiled in (False, True) if cfg.compile else (False,):
                    _log(f"{name} {precision}: transformer-mt" + (" (compiled)" if compiled else ""))
                    try:
                        ours = measure_ours(cfg, variant_cfg, precision, device, compiled=compiled)
                    except RuntimeError as err:  # e.g. a kernel this device lacks in this precision
                        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                        failed = _row(cfg, name, "ours", precision, None, ours_flops, peaks, compiled)
                        rows.append({**failed, "reason": reason})
                        continue
                    row = _row(cfg, name, "ours", precision, ours, ours_flops, peaks, compiled)
                    if name == preset:
                        plain[compiled] = row
                    elif compiled in plain:
                        row["vs_preset"] = row["tokens_per_second"] / plain[compiled]["tokens_per_second"]
                    rows.append(row)
            for system in cfg.peers if model_cfg["arch"] == "transformer" else []:
                _log(f"{preset} {precision}: {NAMES[system]}")
                try:
                    result = measure_peer(system, args, cfg)
                except PeerError as err:
                    failed = _row(cfg, preset, system, precision, None, flops, peaks)
                    rows.append({**failed, "reason": str(err)})
                    continue
                rows.append(_row(cfg, preset, system, precision, result, flops, peaks))
    add_targets(rows, device)
    return {
        "benchmark": "train",
        "environment": environment,
        "settings": asdict(cfg),
        "peak_flops": peaks,
        "rows": rows,
    }


def variant_name(preset: str, overrides: dict[str, Any]) -> str:
    """The row label of a preset with model overrides: `transformer_small attention_window=4`."""
    return " ".join([preset, *(f"{key}={value}" for key, value in overrides.items())])


def _row(cfg, preset, system, precision, result, flops, peaks, compiled=False) -> dict[str, Any]:
    row = {"model": preset, "system": NAMES[system], "precision": precision, "compiled": compiled}
    if result is None:
        return {**row, "status": "failed" if system == "ours" else "not runnable"}
    step = common.median(result["step_seconds"])
    return {
        **row,
        "status": "ok",
        "params": result["params"],
        "step_ms": 1e3 * step,
        "tokens_per_second": cfg.batch_size * cfg.tgt_len / step,
        "flops_per_step": flops,
        "tflops_per_second": flops / step / 1e12,
        "mfu": flops / step / peaks[precision],
        "step_seconds": result["step_seconds"],
        **({"version": result["version"]} if "version" in result else {}),
    }


def add_targets(rows: list[dict[str, Any]], device: torch.device) -> None:
    """Fill `vs_peer` (our tokens/s over the fastest peer's fp32) and the issue's target per row of ours."""
    for row in rows:
        if row["system"] != NAMES["ours"] or row["status"] != "ok":
            continue
        peers_fp32 = [
            r["tokens_per_second"]
            for r in rows
            if r["model"] == row["model"]
            and r["system"] != NAMES["ours"]
            and r["precision"] == "fp32"
            and r["status"] == "ok"
        ]
        if peers_fp32:
            row["vs_peer"] = row["tokens_per_second"] / max(peers_fp32)
        if device.type == "cuda":
            goal = {"transformer_base": 0.40, "transformer_big": 0.50}.get(row["model"])
            if goal is not None and row["precision"] == "bf16":
                row["target"] = f"MFU >= {goal:.0%}"
                row["met"] = row["mfu"] >= goal
        elif "vs_peer" in row:
            goal = {"fp32": 1.1, "bf16": 2.5}.get(row["precision"])
            if goal is not None:
                row["target"] = f">= {goal}x peer fp32"
                row["met"] = row["vs_peer"] >= goal


COLUMNS = [
    ("model", "model"),
    ("system", "system"),
    ("precision", "prec"),
    ("params", "params"),
    ("step_ms", "step ms"),
    ("tokens_per_second", "tgt tok/s"),
    ("tflops_per_second", "TFLOP/s"),
    ("mfu", "MFU"),
    ("vs_peer", "vs best peer fp32"),
    ("vs_preset", "vs preset"),
    ("target", "target"),
    ("verdict", "met"),
]


def table(payload: dict[str, Any]) -> str:
    rows = []
    for row in payload["rows"]:
        shown = dict(row)
        if row["status"] != "ok":
            shown["step_ms"] = row["status"]
        if "met" in row:
            shown["verdict"] = "pass" if row["met"] else "MISS"
        if row.get("compiled"):
            shown["system"] += " (compiled)"
        if "mfu" in row:
            shown["mfu"] = f"{row['mfu']:.1%}"
        for key in ("vs_peer", "vs_preset"):
            if key in row:
                shown[key] = f"{row[key]:.2f}x"
        rows.append(shown)
    lines = [common.format_table(rows, COLUMNS)]
    peaks = ", ".join(f"{p} {v / 1e12:.3g} TFLOP/s" for p, v in payload["peak_flops"].items())
    env = payload["environment"]
    lines.append(
        f"peak (measured matmul): {peaks}; {env['device_name']}, {env['threads']} threads, torch {env['torch']}"
    )
    s = payload["settings"]
    lines.append(
        f"batch {s['batch_size']} x {s['src_len']} src / {s['tgt_len']} tgt tokens, vocab {s['vocab_size']}"
    )
    reasons: dict[str, list[str]] = {}
    for row in payload["rows"]:
        if row["status"] != "ok":
            reasons.setdefault(f"{row['system']}: {row['reason']}", []).append(
                f"{row['model']} {row['precision']}"
            )
    lines += [f"{reason} [{', '.join(where)}]" for reason, where in reasons.items()]
    return "\n".join(lines)


def main(overrides: list[str], show_help: bool) -> int | None:
    if show_help:
        print(common.options_help(TrainBenchConfig, "bench train", __doc__ or ""))
        return None
    cfg = common.parse_options(TrainBenchConfig, overrides, "bench train")
    payload = run(cfg)
    print(table(payload))
    if cfg.output:
        print(f"wrote {common.write_json(cfg.output, payload)}", file=sys.stderr)
    return 0


__all__ = ["TrainBenchConfig", "run", "main", "measure_ours", "load_preset", "table"]
