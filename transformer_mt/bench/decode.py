"""`transformer-mt bench decode`: decoding sentences/s and tokens/s against Hugging Face and CTranslate2.

Our side is `decoding.search.generate` (what `Translator` and `evaluate` call for each batch) on a
model of a preset, here with random weights, decoding a batch of random source sentences greedily
(beam 1) and with beam 4. The peers decode the same batch shape with a model of the same size:

- transformers: a randomly initialised MarianMT model (the Transformer of the paper, post-norm,
  sinusoidal positions, shared embeddings) of equal size and vocabulary, with `generate`;
- ctranslate2: that Marian model converted by CTranslate2's own Transformers converter.

Both run in virtual environments of their own (see `peers.py`). Random weights give outputs of
arbitrary length, so every system is made to do equal work: EOS is forbidden until the maximum,
and every sentence runs the decoder exactly `out_len` times (transformers: min_new_tokens =
max_new_tokens = out_len; CTranslate2: min_decoding_length = max_decoding_length = out_len; ours:
the EOS logit is pushed to -1e4 and the maximum length is out_len - 1 tokens, after which the
search forces EOS on the out_len-th step). tokens/s counts out_len tokens per sentence.
The issue's target is reported, never asserted: decoding >= 2x transformers' generate on a CPU and
>= 3x on a GPU.
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional

import torch
from torch import Tensor

from transformer_mt.bench import common
from transformer_mt.bench.peers import PeerError, run_peer
from transformer_mt.bench.train import MODEL_CONFIGS, load_preset
from transformer_mt.decoding.search import DecodingConfig, generate
from transformer_mt.models import build_model, count_parameters
from transformer_mt.models.interface import DecoderState, EncoderDecoder, EncoderOutput
from transformer_mt.models.transformer import TransformerConfig

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # docs/design.md
SYSTEMS = ("transformers", "ctranslate2")
NAMES = {"ours": "transformer-mt", "transformers": "transformers (HF)", "ctranslate2": "CTranslate2"}


@dataclass
class DecodeBenchConfig:
    """Options of `bench decode` (key=value on the command line)."""

    model: str = "transformer_base"  # a Transformer preset in configs/model/
    beams: List[int] = field(default_factory=lambda: [1, 4])  # 1 is greedy
    precisions: List[str] = field(default_factory=lambda: ["fp32"])
    peers: List[str] = field(default_factory=lambda: list(SYSTEMS))  # transformers, ctranslate2
    batch_size: int = 64  # sentences decoded together
    src_len: int = 32  # source tokens per sentence (the last is EOS)
    out_len: int = 32  # decoder steps per sentence, the same for every system
    vocab_size: int = 32000
    warmup: int = 1  # untimed batches first
    repeats: int = 3  # timed batches; the median is reported
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch (and CTranslate2) CPU threads (default: torch's choice)
    peer_timeout_s: float = 3600.0
    seed: int = 1
    output: Optional[str] = None  # write the results here as JSON

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "repeats", "vocab_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.src_len < 2 or self.out_len < 2:
            problems.append("src_len and out_len must be at least 2")
        if self.vocab_size < 5:
            problems.append(f"vocab_size={self.vocab_size} must leave room for 4 special ids and words")
        if not self.beams or min(self.beams) < 1:
            problems.append(f"beams={list(self.beams)} must be sizes >= 1")
        bad = [p for p in self.precisions if p not in common.PRECISIONS]
        if bad or not self.precisions:
            problems.append(f"precisions={list(self.precisions)}: each must be one of fp32, bf16, fp16")
        bad = [p for p in self.peers if p not in SYSTEMS]
        if bad:
            problems.append(f"peers={bad} unknown; choose from {', '.join(SYSTEMS)} (or peers=[] for none)")
        if not (MODEL_CONFIGS / f"{self.model}.yaml").exists():
            problems.append(f"no model preset {self.model!r} in {MODEL_CONFIGS}")
        if problems:
            raise ValueError("bench decode: " + "; ".join(problems))


class NoEarlyEOS(EncoderDecoder):
    """A model whose EOS logit is pushed to -1e4, so that a search runs to its maximum length.

    The search still forces EOS at the maximum (it masks every other token then), so hypotheses
    end normally; -1e4 rather than -inf keeps that last step's scores finite.
    """

    def __init__(self, model: EncoderDecoder, eos_id: int) -> None:
        super().__init__()
        self.model, self.eos_id, self.pad_id = model, eos_id, model.pad_id

    @property
    def max_positions(self) -> int | None:
        return self.model.max_positions

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        return self.model.encode(src_tokens)

    def decode(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None]:
        logits, state = self.model.decode(prev_tokens, memory, state)
        logits[..., self.eos_id] = -1e4  # (batch, len, vocab)
        return logits, state


def random_sources(cfg: DecodeBenchConfig) -> Tensor:
    """(batch_size, src_len) random word ids in [4, vocab) with a final EOS, no padding."""
    gen = torch.Generator().manual_seed(cfg.seed)
    src = torch.randint(4, cfg.vocab_size, (cfg.batch_size, cfg.src_len), generator=gen)
    src[:, -1] = EOS
    return src


def measure_ours(cfg: DecodeBenchConfig, precision: str, device: torch.device) -> dict[str, Any]:
    """Seconds per batch of `generate`, for each beam size, and the output lengths it produced."""
    torch.manual_seed(cfg.seed)
    model = build_model(load_preset(cfg.model), vocab_size=cfg.vocab_size, pad_id=PAD).to(device).eval()
    search_model = NoEarlyEOS(model, EOS)
    src = random_sources(cfg).to(device)
    result: dict[str, Any] = {"params": count_parameters(model), "seconds": {}, "lengths": {}}
    for beam in cfg.beams:
        decoding = DecodingConfig(beam=beam, lenpen=0.6, max_len_a=0.0, max_len_b=cfg.out_len - 1)
        found: list = []

        def run_batch(decoding: DecodingConfig = decoding, found: list = found) -> None:
            with common.autocast(device, precision):
                found[:] = generate([search_model], src, decoding, bos_id=BOS, eos_id=EOS, pad_id=PAD)

        seconds = common.time_calls(run_batch, warmup=cfg.warmup, repeats=cfg.repeats, device=device)
        result["seconds"][str(beam)] = seconds
        # Output positions decoded per sentence: the tokens and the final EOS.
        result["lengths"][str(beam)] = sorted({len(hyps[0].tokens) + 1 for hyps in found})
    return result


def peer_args(cfg: DecodeBenchConfig, precision: str, device: torch.device) -> dict[str, Any]:
    size = TransformerConfig(**load_preset(cfg.model))
    return {
        "d_model": size.d_model,
        "ffn_dim": size.ffn_dim,
        "heads": size.heads,
        "encoder_layers": size.encoder_layers,
        "decoder_layers": size.decoder_layers,
        "vocab_size": cfg.vocab_size,
        "batch_size": cfg.batch_size,
        "src_len": cfg.src_len,
        "out_len": cfg.out_len,
        "beams": list(cfg.beams),
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "threads": cfg.threads or torch.get_num_threads(),
        "device": device.type,
        "precision": precision,
    }


def run(cfg: DecodeBenchConfig) -> dict[str, Any]:
    """Measure everything `cfg` asks for; the JSON payload (rows, environment, settings)."""
    device = common.device_of(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    environment = common.environment(device)  # dated when the run starts
    if load_preset(cfg.model)["arch"] != "transformer":
        raise ValueError(
            f"bench decode compares Transformers; model={cfg.model!r} is not a Transformer preset"
        )
    rows: list[dict[str, Any]] = []
    for precision in cfg.precisions:
        _log(f"{cfg.model} {precision}: transformer-mt")
        results = {"ours": measure_ours(cfg, precision, device)}
        for system in cfg.peers:
            _log(f"{cfg.model} {precision}: {NAMES[system]}")
            try:
                results[system] = run_peer(
                    system,
                    f"{system}_decode.py",
                    peer_args(cfg, precision, device),
                    timeout_s=cfg.peer_timeout_s,
                    log=_log,
                )
            except PeerError as err:
                results[system] = {"error": str(err)}
        for beam in cfg.beams:
            for system, result in results.items():
                rows.append(_row(cfg, system, precision, beam, result))
    add_targets(rows, device)
    return {
        "benchmark": "decode",
        "environment": environment,
        "settings": asdict(cfg),
        "rows": rows,
    }


def _row(cfg: DecodeBenchConfig, system: str, precision: str, beam: int, result: dict) -> dict[str, Any]:
    row: dict[str, Any] = {"model": cfg.model, "system": NAMES[system], "precision": precision, "beam": beam}
    if "error" in result:
        return {**row, "status": "not runnable", "reason": result["error"]}
    seconds = common.median(result["seconds"][str(beam)])
    return {
        **row,
        "status": "ok",
        "params": result.get("params"),
        "batch_ms": 1e3 * seconds,
        "sentences_per_second": cfg.batch_size / seconds,
        "tokens_per_second": cfg.batch_size * cfg.out_len / seconds,
        "output_lengths": result["lengths"][str(beam)],
        "seconds": result["seconds"][str(beam)],
        **({"version": result["version"]} if "version" in result else {}),
    }


def add_targets(rows: list[dict[str, Any]], device: torch.device) -> None:
    """`vs_hf`: our sentences/s over transformers' at the same beam and precision, and the target."""
    goal = 3.0 if device.type == "cuda" else 2.0
    for row in rows:
        if row["system"] != NAMES["ours"] or row["status"] != "ok":
            continue
        for other in rows:
            same = other["beam"] == row["beam"] and other["precision"] == row["precision"]
            if same and other["system"] == NAMES["transformers"] and other["status"] == "ok":
                row["vs_hf"] = row["sentences_per_second"] / other["sentences_per_second"]
                row["target"] = f">= {goal:g}x HF generate"
                row["met"] = row["vs_hf"] >= goal


COLUMNS = [
    ("model", "model"),
    ("system", "system"),
    ("precision", "prec"),
    ("beam", "beam"),
    ("batch_ms", "batch ms"),
    ("sentences_per_second", "sent/s"),
    ("tokens_per_second", "tok/s"),
    ("vs_hf", "vs HF"),
    ("target", "target"),
    ("verdict", "met"),
]


def table(payload: dict[str, Any]) -> str:
    rows = []
    for row in payload["rows"]:
        shown = dict(row)
        if row["status"] != "ok":
            shown["batch_ms"] = row["status"]
        if "vs_hf" in row:
            shown["vs_hf"] = f"{row['vs_hf']:.2f}x"
        if "met" in row:
            shown["verdict"] = "pass" if row["met"] else "MISS"
        rows.append(shown)
    s, env = payload["settings"], payload["environment"]
    lines = [
        common.format_table(rows, COLUMNS),
        f"batch of {s['batch_size']} random sentences x {s['src_len']} source tokens, {s['out_len']} decoder steps "
        f"each (EOS held back), vocab {s['vocab_size']}; {env['device_name']}, {env['threads']} threads, "
        f"torch {env['torch']}",
    ]
    seen = set()
    for row in payload["rows"]:
        if row["status"] != "ok" and row["system"] not in seen:
            seen.add(row["system"])
            lines.append(f"{row['system']}: {row['reason']}")
    return "\n".join(lines)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(overrides: list[str], show_help: bool) -> int | None:
    if show_help:
        print(common.options_help(DecodeBenchConfig, "bench decode", __doc__ or ""))
        return None
    cfg = common.parse_options(DecodeBenchConfig, overrides, "bench decode")
    payload = run(cfg)
    print(table(payload))
    if cfg.output:
        print(f"wrote {common.write_json(cfg.output, payload)}", file=sys.stderr)
    return 0


__all__ = ["DecodeBenchConfig", "NoEarlyEOS", "run", "main", "measure_ours", "table"]
