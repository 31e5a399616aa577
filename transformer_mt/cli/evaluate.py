"""Decode a test set with beam search and score it with sacreBLEU.

By default the prepared `split` (test) of the run the checkpoint came from; or any pair of raw files
with input=FILE reference=FILE. Decodes as the checkpoint's run validated (its `decoding` settings,
e.g. the preset's length penalty); `decoding.beam=5 decoding.lenpen=1.0 ...` override them. Prints BLEU and chrF with their signatures (and, with
tokenized_bleu=true, the paper's tokenized BLEU with compound splitting, labelled as such);
report=PATH.json writes the scores, signatures, decoding settings, checkpoint, line count and speed.
output= and report= are written to a temporary file and renamed; one that is an input is refused."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from transformer_mt.checkpoint import CheckpointError, load_checkpoint
from transformer_mt.cli.common import (
    checkpoint_inputs,
    checkpoint_paths,
    load_config,
    load_translator,
    refuse_overwriting,
    replace_when_done,
)
from transformer_mt.data.prepare import load_prepared
from transformer_mt.decoding.scoring import corpus_scores, format_scores


def main(overrides: list[str], show_help: bool) -> None:
    cfg = load_config("evaluate", overrides, show_help, __doc__)
    if cfg is None:
        return
    paths = checkpoint_paths(cfg.checkpoint)
    src_path, ref_path, tgt_lang = _test_files(cfg, paths[0])
    inputs = {"input": src_path, "reference": ref_path, **checkpoint_inputs(cfg.checkpoint)}
    refuse_overwriting({"output": cfg.output, "report": cfg.report}, inputs)
    sources = _read_lines(src_path)
    references = _read_lines(ref_path)
    if len(sources) != len(references):
        raise ValueError(f"{src_path} has {len(sources)} lines but {ref_path} has {len(references)}")
    translator = load_translator(cfg, overrides)
    started = time.perf_counter()
    results = translator.translate(sources)
    seconds = time.perf_counter() - started
    hypotheses = [hyps[0].text if hyps else "" for hyps in results]
    scores = corpus_scores(hypotheses, references, tokenized_bleu=cfg.tokenized_bleu, target_lang=tgt_lang)
    print(format_scores(scores))
    print(f"{len(sources)} sentences in {seconds:.1f} s ({len(sources) / max(seconds, 1e-9):.1f} sentences/s)",
          file=sys.stderr)
    if cfg.output:
        with replace_when_done(cfg.output) as sink:
            sink.write("".join(h + "\n" for h in hypotheses))
    if cfg.report:
        report = {
            "scores": scores,
            "checkpoint": paths,
            "input": str(src_path),
            "reference": str(ref_path),
            "lines": len(sources),
            "seconds": seconds,
            "sentences_per_second": len(sources) / max(seconds, 1e-9),
            "decoding": dataclasses.asdict(translator.cfg),
            "device": cfg.device,
            "precision": cfg.precision,
        }
        with replace_when_done(cfg.report) as sink:
            sink.write(json.dumps(report, indent=2) + "\n")


def _test_files(cfg, checkpoint: str) -> tuple[Path, Path, str | None]:
    """(source, reference, target language) to evaluate on."""
    if cfg.input or cfg.reference:
        if not (cfg.input and cfg.reference):
            raise ValueError("give both input=FILE and reference=FILE, or neither (to use the prepared split)")
        suffix = Path(cfg.reference).suffix.lstrip(".")
        lang = cfg.target_lang or (suffix if suffix.isalpha() and len(suffix) == 2 else None)  # ISO 639-1
        if lang is None and cfg.tokenized_bleu:
            raise ValueError(
                f"tokenized_bleu=true needs the reference's language for the Moses tokenizer: name it with "
                f"target_lang=de (or a reference file ending in .de), not {cfg.reference!r}"
            )
        return Path(cfg.input), Path(cfg.reference), lang
    # The run folder is the checkpoint's grandparent (RUN/checkpoints/X.pt) unless it was moved away
    # from its data; then the output_dir stored in the checkpoint (relative to where training ran).
    run_dir = Path(checkpoint).resolve().parent.parent
    if not (run_dir / "data").is_dir():
        stored = load_checkpoint(checkpoint).get("config")
        if not isinstance(stored, dict) or not isinstance(stored.get("output_dir"), str):
            raise CheckpointError(
                f"checkpoint {checkpoint} does not say which run made it (no config.output_dir) and has no "
                "data/ folder beside it; give input=FILE reference=FILE"
            )
        run_dir = Path(stored["output_dir"])
    data = load_prepared(run_dir)
    src, tgt = data.text_paths(cfg.split)
    return Path(src), Path(tgt), cfg.target_lang or data.tgt_lang


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        return [raw.rstrip(b"\r\n").decode("utf-8", errors="replace").lstrip("\ufeff") for raw in f]
