"""`transformer-mt bench decode`: decoding sentences/s and tokens/s against Hugging Face and CTranslate2.

Our side is `decoding.search.generate` (what `Translator` and `evaluate` call for each batch) on a
model of a preset, here with random weights, greedily (beam 1) and with beam 4. The peers decode
the very same batches of source ids with a model of the same size and vocabulary:

- transformers: a randomly initialised MarianMT model (the Transformer of the paper, post-norm,
  sinusoidal positions, shared embeddings) of equal size and vocabulary, with `generate`;
- ctranslate2: that Marian model converted by CTranslate2's own Transformers converter;
- ctranslate2_export, transformers_export: our very model (the same random weights as our rows)
  exported by `transformer-mt export` and run by CTranslate2 / by `MarianMTModel.generate`.

All run in virtual environments of their own (see `peers.py`); the exports are written in ours,
which needs `pip install transformer-mt[export]`. `precisions` may include int8: our search with
`quantize=int8` (dynamic int8 linear layers, CPU only), and CTranslate2's `compute_type=int8` for
both CTranslate2 rows (transformers has no int8 row). What is decoded:

- `input=FILE` (e.g. ../shared/data/wmt14_en_de/newstest2013.en): real sentences, encoded with a
  sentencepiece model (`spm=PATH`, or one of up to `vocab_size` pieces trained on the file itself)
  and cut into batches exactly as `Translator` cuts them: sorted by length, at most `batch_tokens`
  padded source tokens per batch. One timed repeat is one pass over every batch.
- no input: one batch of `batch_size` random sentences of `src_len` tokens.

Random weights give outputs of arbitrary length, so every system is made to do equal work: EOS is
forbidden until a fixed number of decoder steps per batch, and every sentence of the batch runs the
decoder exactly that many times (transformers: min_new_tokens = max_new_tokens; CTranslate2:
min_decoding_length = max_decoding_length; ours: the EOS logit is pushed to -1e4 and the maximum
length is one token less, after which the search forces EOS). That number is `out_len` for random
sentences and, for a file, the batch's padded source length (its longest sentence with EOS): a
translation about as long as its source. tokens/s counts those decoder steps; each system reports
the steps it actually ran (`output_tokens`), so equal work is checked, not assumed.
The issue's targets are reported, never asserted: decoding >= 2x transformers' generate with beam 4
on a CPU (1.5x greedy) and >= 3x on a GPU, and our int8 at least as fast as CTranslate2 in fp32.
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch import Tensor

from transformer_mt.bench import common
from transformer_mt.bench.peers import PeerError, run_peer
from transformer_mt.bench.train import MODEL_CONFIGS, load_preset
from transformer_mt.data.corpus import read_lines
from transformer_mt.data.vocab import Vocabulary, train_vocabulary
from transformer_mt.decoding.quantize import quantize_int8
from transformer_mt.decoding.search import DecodingConfig, generate
from transformer_mt.decoding.translator import collate_sources, length_sorted_batches
from transformer_mt.export import ExportError
from transformer_mt.export.ctranslate2 import export_ctranslate2
from transformer_mt.export.huggingface import export_huggingface
from transformer_mt.models import build_model, count_parameters
from transformer_mt.models.interface import DecoderState, EncoderDecoder, EncoderOutput
from transformer_mt.models.transformer import Transformer, TransformerConfig
from transformer_mt.runtime import PRECISIONS, autocast, resolve_device

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # docs/design.md
SYSTEMS = ("transformers", "ctranslate2", "ctranslate2_export", "transformers_export")
NAMES = {
    "ours": "transformer-mt",
    "transformers": "transformers (HF)",
    "ctranslate2": "CTranslate2",
    "ctranslate2_export": "CTranslate2 (our export)",
    "transformers_export": "transformers (our export)",
}
# system -> (the peer's virtual environment, its script); the exports run in the engines' own.
PEER_RUNS = {
    "transformers": ("transformers", "transformers_decode.py"),
    "ctranslate2": ("ctranslate2", "ctranslate2_decode.py"),
    "ctranslate2_export": ("ctranslate2", "ctranslate2_decode.py"),
    "transformers_export": ("transformers", "transformers_decode.py"),
}
INT8 = "int8"  # a precision of this benchmark: int8 products (ours: quantize=int8)
WITH_INT8 = ("ctranslate2", "ctranslate2_export")  # the peers that have an int8 mode


@dataclass
class DecodeBenchConfig:
    """Options of `bench decode` (key=value on the command line)."""

    model: str = "transformer_base"  # a Transformer preset in configs/model/
    beams: List[int] = field(default_factory=lambda: [1, 4])  # 1 is greedy
    precisions: List[str] = field(default_factory=lambda: ["fp32"])  # fp32, bf16, fp16, int8 (CPU)
    peers: List[str] = field(default_factory=lambda: list(SYSTEMS))  # see SYSTEMS
    input: Optional[str] = None  # a text file, one sentence per line; None: random sentences
    spm: Optional[str] = None  # sentencepiece model for `input`; None: train one on the input
    max_sentences: int = 0  # decode only the first N non-empty lines of `input` (0: all)
    batch_tokens: int = DecodingConfig.batch_tokens  # padded source tokens per batch of `input`
    batch_size: int = 64  # random sentences decoded together
    src_len: int = 32  # source tokens per random sentence (the last is EOS)
    out_len: int = 32  # decoder steps per random sentence, the same for every system
    vocab_size: int = 32000
    warmup: int = 1  # untimed runs of the first batch
    repeats: int = 3  # timed passes over every batch; the median is reported
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch (and CTranslate2) CPU threads (default: torch's choice)
    peer_timeout_s: float = 3600.0
    seed: int = 1
    output: Optional[str] = None  # write the results here as JSON

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "repeats", "vocab_size", "batch_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.src_len < 2 or self.out_len < 2:
            problems.append("src_len and out_len must be at least 2")
        if self.vocab_size < 5:
            problems.append(f"vocab_size={self.vocab_size} must leave room for 4 special ids and words")
        if not self.beams or min(self.beams) < 1:
            problems.append(f"beams={list(self.beams)} must be sizes >= 1")
        bad = [p for p in self.precisions if p not in (*PRECISIONS, INT8)]
        if bad or not self.precisions:
            problems.append(f"precisions={list(self.precisions)}: each must be one of fp32, bf16, fp16, int8")
        bad = [p for p in self.peers if p not in SYSTEMS]
        if bad:
            problems.append(f"peers={bad} unknown; choose from {', '.join(SYSTEMS)} (or peers=[] for none)")
        if self.max_sentences < 0:
            problems.append(f"max_sentences={self.max_sentences} must be 0 (all) or positive")
        for name in ("input", "spm"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name}={path}: no such file")
        if self.spm is not None and self.input is None:
            problems.append("spm is for encoding input=FILE; give input too")
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


@dataclass
class Workload:
    """What every system decodes: batches of source ids and the decoder steps of each batch."""

    batches: list[Tensor]  # (batch, width): ids + EOS, right-padded with PAD (our ids, docs/design.md)
    steps: list[int]  # decoder steps of every sentence of each batch, EOS included
    description: str
    vocab: Vocabulary | None = None  # the sentencepiece model of a file's sentences

    def pieces(self, vocab_size: int) -> list[str]:
        """A token name per id of a `vocab_size` model, for the exports: the sentencepiece model's
        pieces, then made-up names for the ids it does not fill (random sentences: all of them)."""
        known = ["<pad>", "<unk>", "<s>", "</s>"]
        if self.vocab is not None:
            known = self.vocab.id_pieces(range(len(self.vocab)))
        return known + [f"<extra{i}>" for i in range(len(known), vocab_size)]

    @property
    def sentences(self) -> int:
        return sum(b.size(0) for b in self.batches)

    @property
    def tokens(self) -> int:
        """Decoder steps in one pass: the tokens/s numerator."""
        return sum(b.size(0) * n for b, n in zip(self.batches, self.steps, strict=True))


def random_workload(cfg: DecodeBenchConfig) -> Workload:
    """One batch of `batch_size` x `src_len` random word ids in [4, vocab) with a final EOS."""
    gen = torch.Generator().manual_seed(cfg.seed)
    src = torch.randint(4, cfg.vocab_size, (cfg.batch_size, cfg.src_len), generator=gen)
    src[:, -1] = EOS
    description = (
        f"one batch of {cfg.batch_size} random sentences x {cfg.src_len} source tokens, "
        f"{cfg.out_len} decoder steps each (EOS held back)"
    )
    return Workload([src], [cfg.out_len], description)


def file_workload(cfg: DecodeBenchConfig) -> Workload:
    """The non-empty lines of `cfg.input`, encoded and batched as `Translator` does."""
    assert cfg.input is not None
    lines = [line for line in read_lines(cfg.input) if line.strip()]
    if cfg.max_sentences:
        lines = lines[: cfg.max_sentences]
    if not lines:
        raise ValueError(f"bench decode: {cfg.input} has no non-empty line")
    if cfg.spm is not None:
        vocab, made = Vocabulary.from_file(cfg.spm), f"sentencepiece model {cfg.spm}"
    else:
        with tempfile.TemporaryDirectory() as folder:
            vocab = train_vocabulary(lines, Path(folder) / "spm", vocab_size=cfg.vocab_size)
        made = f"a {len(vocab)}-piece BPE trained on those lines"
    if len(vocab) > cfg.vocab_size:
        raise ValueError(
            f"bench decode: {cfg.spm} has {len(vocab)} pieces, more than vocab_size={cfg.vocab_size}"
        )
    ids = vocab.encode_batch(lines)
    lengths = dict(enumerate(len(x) for x in ids))
    batches = [
        collate_sources([ids[i] for i in indices], pad_id=PAD, eos_id=EOS)
        for indices in length_sorted_batches(lengths, cfg.batch_tokens)
    ]
    steps = [b.size(1) for b in batches]  # the longest source of the batch, with its EOS
    description = (
        f"{cfg.input}: {len(lines)} sentences ({sum(lengths.values()) + len(lines)} source tokens with "
        f"EOS; {made}) in {len(batches)} length-sorted batches of <= {cfg.batch_tokens} padded tokens; "
        "each batch decodes as many steps as its longest source (EOS held back)"
    )
    return Workload(batches, steps, description, vocab)


def our_model(cfg: DecodeBenchConfig, device: torch.device) -> Transformer:
    """The model of our rows (and of the exports): the preset with random weights from `cfg.seed`."""
    torch.manual_seed(cfg.seed)
    model = build_model(load_preset(cfg.model), vocab_size=cfg.vocab_size, pad_id=PAD)
    return model.to(device).eval()


def measure_ours(
    cfg: DecodeBenchConfig, work: Workload, precision: str, device: torch.device
) -> dict[str, Any]:
    """Seconds per pass of `generate` over the workload, for each beam size, and the steps it ran.
    Precision int8: the model's linear layers quantized as `quantize=int8` does, fp32 otherwise."""
    model = our_model(cfg, device)
    params = count_parameters(model)
    if precision == INT8:
        model, precision = quantize_int8(model), "fp32"
    search_model = NoEarlyEOS(model, EOS)
    batches = [b.to(device) for b in work.batches]
    result: dict[str, Any] = {"params": params, "seconds": {}, "output_tokens": {}}
    for beam in cfg.beams:
        ran: list[int] = []

        def decode(index: int, beam: int = beam, ran: list = ran) -> None:
            decoding = DecodingConfig(beam=beam, lenpen=0.6, max_len_a=0.0, max_len_b=work.steps[index] - 1)
            with autocast(device, precision):
                found = generate([search_model], batches[index], decoding, bos_id=BOS, eos_id=EOS, pad_id=PAD)
            ran.append(sum(len(hyps[0].tokens) + 1 for hyps in found))  # the tokens and the final EOS

        def one_pass(ran: list = ran, decode=decode) -> None:
            ran.clear()
            for index in range(len(batches)):
                decode(index)

        for _ in range(cfg.warmup):
            decode(0)
        result["seconds"][str(beam)] = common.time_calls(
            one_pass, warmup=0, repeats=cfg.repeats, device=device
        )
        result["output_tokens"][str(beam)] = sum(ran)
    return result


def peer_args(cfg: DecodeBenchConfig, work: Workload, precision: str, device: torch.device) -> dict[str, Any]:
    size = TransformerConfig(**load_preset(cfg.model))
    return {
        "d_model": size.d_model,
        "ffn_dim": size.ffn_dim,
        "heads": size.heads,
        "encoder_layers": size.encoder_layers,
        "decoder_layers": size.decoder_layers,
        "vocab_size": cfg.vocab_size,
        "batches": [b.tolist() for b in work.batches],  # our ids: pad 0, unk 1, bos 2, eos 3
        "steps": work.steps,
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
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    environment = common.environment(device)  # dated when the run starts
    if load_preset(cfg.model)["arch"] != "transformer":
        raise ValueError(
            f"bench decode compares Transformers; model={cfg.model!r} is not a Transformer preset"
        )
    if INT8 in cfg.precisions and device.type != "cpu":
        raise ValueError("bench decode: precision int8 is for CPUs (quantize=int8); use device=cpu")
    work = file_workload(cfg) if cfg.input else random_workload(cfg)
    _log(work.description)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        exports = write_exports(cfg, work, device, Path(folder))
        for precision in cfg.precisions:
            _log(f"{cfg.model} {precision}: transformer-mt")
            results = {"ours": measure_ours(cfg, work, precision, device)}
            for system in cfg.peers:
                if precision == INT8 and system not in WITH_INT8:
                    continue
                _log(f"{cfg.model} {precision}: {NAMES[system]}")
                results[system] = _run_system(cfg, work, precision, device, system, exports)
            for beam in cfg.beams:
                for system, result in results.items():
                    rows.append(_row(cfg, work, system, precision, beam, result))
    add_targets(rows, device)
    return {
        "benchmark": "decode",
        "environment": environment,
        "settings": asdict(cfg),
        "workload": {
            "description": work.description,
            "sentences": work.sentences,
            "batches": len(work.batches),
            "decoder_steps": work.tokens,
        },
        "rows": rows,
    }


def write_exports(
    cfg: DecodeBenchConfig, work: Workload, device: torch.device, folder: Path
) -> dict[str, Path | str]:
    """Our model exported for the export rows that `cfg.peers` asks for: system -> its folder, or
    the reason it could not be written (the extra not installed)."""
    wanted = [system for system in ("ctranslate2_export", "transformers_export") if system in cfg.peers]
    if not wanted:
        return {}
    model = our_model(cfg, torch.device("cpu"))
    pieces = work.pieces(cfg.vocab_size)
    exports: dict[str, Path | str] = {}
    for system in wanted:
        out = folder / system
        out.mkdir()
        try:
            if system == "ctranslate2_export":
                export_ctranslate2(model, pieces, out)
            else:
                export_huggingface(model, pieces, out, decoding={"beam": max(cfg.beams), "lenpen": 0.6})
            exports[system] = out
        except ExportError as err:
            exports[system] = str(err)
    return exports


def _run_system(
    cfg: DecodeBenchConfig,
    work: Workload,
    precision: str,
    device: torch.device,
    system: str,
    exports: dict[str, Path | str],
) -> dict[str, Any]:
    """One peer's measurement in its own environment, or {"error": why not}."""
    venv, script = PEER_RUNS[system]
    args = peer_args(cfg, work, precision, device)
    if system in exports:
        if not isinstance(exports[system], Path):
            return {"error": exports[system]}
        args["model_dir"] = str(exports[system])
    try:
        return run_peer(venv, script, args, timeout_s=cfg.peer_timeout_s, log=_log)
    except PeerError as err:
        return {"error": str(err)}


def _row(
    cfg: DecodeBenchConfig, work: Workload, system: str, precision: str, beam: int, result: dict
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": cfg.model, "system": NAMES[system], "precision": precision, "beam": beam}
    if "error" in result:
        return {**row, "status": "not runnable", "reason": result["error"]}
    seconds = common.median(result["seconds"][str(beam)])
    return {
        **row,
        "status": "ok",
        "params": result.get("params"),
        "pass_seconds": seconds,
        "sentences_per_second": work.sentences / seconds,
        "tokens_per_second": work.tokens / seconds,
        "output_tokens": result["output_tokens"][str(beam)],
        "equal_work": result["output_tokens"][str(beam)] == work.tokens,
        "seconds": result["seconds"][str(beam)],
        **({"version": result["version"]} if "version" in result else {}),
    }


def add_targets(rows: list[dict[str, Any]], device: torch.device) -> None:
    """`vs_hf`: our sentences/s over transformers' at the same beam and precision (the random
    MarianMT, else our HF export), against the issue's target (CPU: 2x with beams, 1.5x greedy; GPU:
    3x). Our int8 rows: `vs_ct2_fp32`, over CTranslate2's fp32 at the same beam (the random Marian
    conversion, else our export), target 1x."""

    def find(system: str, beam: int, precision: str) -> dict[str, Any] | None:
        wanted = (NAMES[system], beam, precision, "ok")
        for other in rows:
            if (other["system"], other["beam"], other["precision"], other["status"]) == wanted:
                return other
        return None

    for row in rows:
        if row["system"] != NAMES["ours"] or row["status"] != "ok":
            continue
        if row["precision"] == INT8:
            other = find("ctranslate2", row["beam"], "fp32")
            other = other or find("ctranslate2_export", row["beam"], "fp32")
            if other:
                row["vs_ct2_fp32"] = row["sentences_per_second"] / other["sentences_per_second"]
                row["target"] = ">= 1x CTranslate2 fp32"
                row["met"] = row["vs_ct2_fp32"] >= 1.0
            continue
        other = find("transformers", row["beam"], row["precision"])
        other = other or find("transformers_export", row["beam"], row["precision"])
        if other:
            goal = 3.0 if device.type == "cuda" else (1.5 if row["beam"] == 1 else 2.0)
            row["vs_hf"] = row["sentences_per_second"] / other["sentences_per_second"]
            row["target"] = f">= {goal:g}x HF generate"
            row["met"] = row["vs_hf"] >= goal


COLUMNS = [
    ("model", "model"),
    ("system", "system"),
    ("precision", "prec"),
    ("beam", "beam"),
    ("pass_seconds", "pass s"),
    ("sentences_per_second", "sent/s"),
    ("tokens_per_second", "tok/s"),
    ("vs_hf", "vs HF"),
    ("vs_ct2_fp32", "vs CT2 fp32"),
    ("target", "target"),
    ("verdict", "met"),
]


def table(payload: dict[str, Any]) -> str:
    rows = []
    for row in payload["rows"]:
        shown = dict(row)
        if row["status"] != "ok":
            shown["pass_seconds"] = row["status"]
        elif not row["equal_work"]:
            shown["system"] = f"{row['system']} (ran {row['output_tokens']} steps!)"
        for key in ("vs_hf", "vs_ct2_fp32"):
            if key in row:
                shown[key] = f"{row[key]:.2f}x"
        if "met" in row:
            shown["verdict"] = "pass" if row["met"] else "MISS"
        rows.append(shown)
    s, env, work = payload["settings"], payload["environment"], payload["workload"]
    lines = [
        common.format_table(rows, COLUMNS),
        f"{work['description']}; {work['decoder_steps']} decoder steps per pass, vocab {s['vocab_size']}; "
        f"{env['device_name']}, {env['threads']} threads, torch {env['torch']}",
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


__all__ = [
    "DecodeBenchConfig",
    "NoEarlyEOS",
    "Workload",
    "file_workload",
    "random_workload",
    "run",
    "main",
    "measure_ours",
    "table",
]
