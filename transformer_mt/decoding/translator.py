"""From raw lines of text to translations: encode, batch, search, detokenize (paper section 6.1).

`Translator.translate` keeps exactly one result per input line, in input order:

- an empty or whitespace-only line gives one empty hypothesis (text "", score 0) without a model call;
- a line longer than the model's positions is truncated to fit (with a warning naming its 1-based
  line number), never dropped;
- sentences are sorted by length and cut into batches of at most `cfg.batch_tokens` padded source
  tokens (a longer sentence gets a batch of its own), so little compute goes to padding; the
  results are put back in input order. The search gives a sentence the same output whatever batch
  it lands in (except for rounding differences of the model's batched kernels, and for sampling,
  which draws from one generator per batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transformer_mt.checkpoint import CheckpointError, load_for_inference
from transformer_mt.data.vocab import Vocabulary, vocabulary_difference
from transformer_mt.decoding.search import DecodingConfig, Hypothesis, generate
from transformer_mt.models.interface import EncoderDecoder
from transformer_mt.runtime import autocast, local_runtime


@dataclass
class Translation(Hypothesis):
    """A hypothesis with its detokenized text and the source ids it translates (without EOS)."""

    text: str = ""
    source: list[int] = field(default_factory=list)


class Translator:
    """Translates lines of raw text with one model or an ensemble that shares one vocabulary.

        translator = Translator.from_checkpoint("runs/multi30k_en_de/checkpoints/checkpoint_last.pt")
        print(translator.translate(["A man rides a bike."])[0][0].text)
    """

    def __init__(
        self,
        models: Sequence[EncoderDecoder],
        vocab: Vocabulary,
        cfg: DecodingConfig,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """`precision` bf16 or fp16 runs the models under autocast.

        `warn` receives the message of each truncated line (default: `warnings.warn`).
        """
        if not models:
            raise ValueError("a Translator needs at least one model")
        self.device = torch.device(device)
        self.models = [model.to(self.device) for model in models]
        self.vocab, self.cfg, self.precision = vocab, cfg, precision
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
        positions = [m.max_positions for m in self.models if m.max_positions is not None]
        self.max_positions = min(positions) if positions else None

    @classmethod
    def from_checkpoint(
        cls,
        paths: str | Path | Sequence[str | Path],
        *,
        device: str = "auto",
        precision: str = "fp32",
        warn: Callable[[str], None] | None = None,
        **decoding: Any,
    ) -> Translator:
        """A translator over a checkpoint (or a list of them, an ensemble), decoding as the run that
        made it validated (its stored `decoding` settings), with `decoding` keyword arguments
        (beam=5, lenpen=1.0, ... any `DecodingConfig` field) on top."""
        runtime = local_runtime(device=device, precision=precision)
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise ValueError("Translator.from_checkpoint needs at least one checkpoint path")
        loaded = [load_for_inference(path, runtime.device) for path in paths]
        first = loaded[0]
        for other in loaded[1:]:
            if difference := vocabulary_difference(other.vocab, first.vocab):
                raise CheckpointError(
                    f"{other.path} uses a different vocabulary from {first.path} ({difference}); cannot ensemble"
                )
        cfg = DecodingConfig.from_stored(first.decoding, **decoding)
        models = [item.model for item in loaded]
        return cls(models, first.vocab, cfg, device=runtime.device, precision=precision, warn=warn)

    def translate(self, lines: Sequence[str], *, first_line: int = 1) -> list[list[Translation]]:
        """For each line, up to `cfg.nbest` translations, best first (exactly one list per line).
        `first_line` is the 1-based number of `lines[0]` in the whole input, for the warnings of
        a caller that translates a long input in chunks."""
        results: list[list[Translation]] = [[] for _ in lines]
        sources: dict[int, list[int]] = {}  # line index -> source ids without EOS
        for index, line in enumerate(lines):
            if line.strip():
                sources[index] = self.source_ids(line, first_line - 1 + index)
            else:
                results[index] = [
                    Translation(tokens=[], score=0.0, logprob=0.0, positional_scores=[], text="")
                ]
        lengths = {index: len(ids) for index, ids in sources.items()}
        for indices in length_sorted_batches(lengths, self.cfg.batch_tokens):
            src_tokens = collate_sources(
                [sources[i] for i in indices], pad_id=self.vocab.pad_id, eos_id=self.vocab.eos_id
            ).to(self.device)
            with autocast(self.device, self.precision):
                found = generate(
                    self.models,
                    src_tokens,
                    self.cfg,
                    bos_id=self.vocab.bos_id,
                    eos_id=self.vocab.eos_id,
                    pad_id=self.vocab.pad_id,
                )
            for index, hyps in zip(indices, found, strict=True):
                results[index] = [self._with_text(h, sources[index]) for h in hyps]
        return results

    def source_ids(self, line: str, index: int = 0) -> list[int]:
        """The ids the search reads for `line` (without EOS), truncated to the model's positions with
        a warning that names the line (`index` counts from 0)."""
        line = line.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates become "?"
        ids = self.vocab.encode(line)
        if self.max_positions is not None and len(ids) > self.max_positions - 1:
            keep = self.max_positions - 1  # and the EOS makes max_positions
            self.warn(
                f"input line {index + 1}: {len(ids)} subword tokens do not fit the model's "
                f"max_positions={self.max_positions}; translating only the first {keep}"
            )
            ids = ids[:keep]
        return ids

    def _with_text(self, hyp: Hypothesis, source: list[int]) -> Translation:
        return Translation(
            hyp.tokens, hyp.score, hyp.logprob, hyp.positional_scores, self.vocab.decode(hyp.tokens), source
        )


def length_sorted_batches(lengths: dict[int, int], max_tokens: int) -> list[list[int]]:
    """Sentence keys sorted by length (ties by key) and cut into batches of at most `max_tokens`
    padded tokens, counting each sentence's EOS: `len(batch) * (longest + 1) <= max_tokens`, except
    that a sentence too long for the budget gets a batch of its own. `lengths`: key -> ids without EOS."""
    batches: list[list[int]] = []
    current: list[int] = []
    for key in sorted(lengths, key=lambda k: (lengths[k], k)):
        width = lengths[key] + 1  # the longest so far, with its EOS
        if current and (len(current) + 1) * width > max_tokens:
            batches.append(current)
            current = []
        current.append(key)
    if current:
        batches.append(current)
    return batches


def collate_sources(sentences: Sequence[Sequence[int]], *, pad_id: int, eos_id: int) -> torch.Tensor:
    """(batch, src_len) ids + EOS, right-padded with PAD, on the CPU."""
    width = max(len(s) for s in sentences) + 1
    src = torch.full((len(sentences), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(sentences):
        src[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        src[row, len(ids)] = eos_id
    return src


def format_nbest(line_index: int, hyps: Sequence[Translation]) -> str:
    """The n-best list of one input line: a line `INDEX<TAB>RANK<TAB>SCORE<TAB>TEXT` per hypothesis.

    INDEX is the input line's index as given (the CLI counts from 0), RANK counts from 1 (the best),
    SCORE is the length-normalised log-probability the hypotheses are ranked by, with 4 decimals.
    Tabs and line breaks inside TEXT become spaces, so each hypothesis stays on one line of four
    fields. Lines are joined with "\\n", without a final newline; no hypotheses give "".
    """
    rows = []
    for rank, hyp in enumerate(hyps, start=1):
        text = " ".join(hyp.text.replace("\t", " ").splitlines())
        rows.append(f"{line_index}\t{rank}\t{hyp.score:.4f}\t{text}")
    return "\n".join(rows)


__all__ = ["Translation", "Translator", "collate_sources", "format_nbest", "length_sorted_batches"]
