"""Translate raw text with a checkpoint (or an ensemble: checkpoint=[a.pt,b.pt]).

Reads standard input (or input=FILE) and writes exactly one line per input line, in order, empty
lines included (interactive, line by line, when standard input is a terminal). With decoding.nbest=K
each input line gives exactly K lines `INDEX<TAB>RANK<TAB>SCORE<TAB>TEXT` instead (an empty line's
one empty translation, or the last of fewer than K hypotheses, repeated). With print_alignment=true
each output line ends in two more fields, `<TAB>PIECE_ALIGNMENT<TAB>WORD_ALIGNMENT`: for each target
piece the source piece it attends to most (the last decoder layer's encoder-decoder attention,
averaged over heads), as space-separated SOURCE-TARGET pairs of 0-based indices, then the same
mapped to words (decoding/alignment.py). The sentencepiece model travels inside the checkpoint, so
the checkpoint path is all that is needed. Decodes as the checkpoint's run validated;
`decoding.beam=5 decoding.lenpen=1.0 ...` override its settings. output=FILE is written to a
temporary file beside it and renamed at the end (an output that is the input is refused)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from transformer_mt.cli.common import (
    checkpoint_inputs,
    load_config,
    load_translator,
    refuse_overwriting,
    replace_when_done,
)
from transformer_mt.decoding.alignment import Alignment, align
from transformer_mt.decoding.translator import format_nbest

CHUNK_LINES = 2000  # translate this many lines at a time: bounded memory on any input size


def main(overrides: list[str], show_help: bool) -> None:
    cfg = load_config("translate", overrides, show_help, __doc__)
    if cfg is None:
        return
    refuse_overwriting({"output": cfg.output}, {"input": cfg.input, **checkpoint_inputs(cfg.checkpoint)})
    translator = load_translator(cfg, overrides)
    with contextlib.ExitStack() as files:
        source = files.enter_context(open(cfg.input, "rb")) if cfg.input else sys.stdin.buffer
        if cfg.output:
            sink = files.enter_context(replace_when_done(cfg.output))  # renamed over output at the end
        else:
            if hasattr(sys.stdout, "reconfigure"):
                sys.stdout.reconfigure(encoding="utf-8")  # translations are UTF-8 text, whatever the locale
            sink = sys.stdout
        interactive = cfg.input is None and sys.stdin.isatty()
        index = 0
        for chunk in _chunks(source, 1 if interactive else CHUNK_LINES):
            for hyps in translator.translate(chunk, first_line=index + 1):
                hyps = _exactly(hyps, translator.cfg.nbest)
                if cfg.print_alignment:
                    _write_aligned(sink, index, hyps, translator.cfg.nbest, align(translator, hyps))
                else:
                    _write(sink, index, hyps, translator.cfg.nbest)
                index += 1
            sink.flush()


def _chunks(source: BinaryIO, size: int) -> Iterator[list[str]]:
    """Lines split on '\\n' only (never on other Unicode breaks), decoded leniently."""
    chunk: list[str] = []
    for raw in source:
        chunk.append(raw.rstrip(b"\r\n").decode("utf-8", errors="replace").lstrip("\ufeff"))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _exactly(hyps: list, nbest: int) -> list:
    """`nbest` hypotheses: an empty input line's one empty translation (or the last of fewer than
    `nbest`) repeated, so that decoding.nbest=K gives K lines for every input line."""
    return hyps + hyps[-1:] * (nbest - len(hyps)) if hyps else hyps


def _write(sink: TextIO, index: int, hyps: list, nbest: int) -> None:
    if nbest > 1:
        if hyps:
            sink.write(format_nbest(index, hyps) + "\n")
        else:
            sink.write("".join(f"{index}\t{rank}\t0.0\t\n" for rank in range(1, nbest + 1)))
    else:
        sink.write((hyps[0].text if hyps else "") + "\n")


def _write_aligned(sink: TextIO, index: int, hyps: list, nbest: int, alignments: list[Alignment]) -> None:
    """print_alignment=true: each output line gains two fields, <TAB>PIECE_PAIRS<TAB>WORD_PAIRS
    (`S-T` pairs of 0-based indices), both empty for an empty line."""
    if nbest > 1:
        rows = format_nbest(index, hyps).split("\n") if hyps else [f"{index}\t1\t0.0\t"]
    else:
        rows = [hyps[0].text if hyps else ""]
    pairs = [a.format() for a in alignments] + [("", "")] * (len(rows) - len(alignments))
    for row, (pieces, words) in zip(rows, pairs, strict=False):
        sink.write(f"{row}\t{pieces}\t{words}\n")
