"""Validation during training: loss on the whole valid split, BLEU on its first sentences.

The loss is the label-smoothed cross-entropy of training (and its nll), per target token in base 2,
sharded over the ranks and summed. BLEU decodes the first `sentences` validation sentences exactly
as `translate` and `evaluate` do (beam search from the run's decoding config, sentencepiece
detokenization, sacreBLEU), on rank 0 alone; the other ranks receive its score, so every rank takes
the same decision about the best checkpoint and early stopping. Each part's seconds are reported
with the scores (`loss_seconds`, `bleu_seconds`): BLEU on a whole test set costs a decoding pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from transformer_mt.data.binarize import PairSubset, ParallelDataset
from transformer_mt.data.prepare import PreparedData
from transformer_mt.decoding.scoring import corpus_scores
from transformer_mt.decoding.translator import Translator
from transformer_mt.models import EncoderDecoder
from transformer_mt.runtime import Runtime
from transformer_mt.training.loss import label_smoothed_cross_entropy


@dataclass
class ValidationSet:
    """What every validation of a run reads, cut once per run: the valid pairs that fit the model,
    this rank's batches of them, the reference text and how to decode it."""

    data: PreparedData
    pairs: ParallelDataset | PairSubset
    batches: list[list[int]]  # positions in `pairs`
    decoding_cfg: Any


@torch.no_grad()
def validation_loss(
    runtime: Runtime,
    model: EncoderDecoder,
    dataset: ParallelDataset | PairSubset,
    batches: list[list[int]],
    *,
    label_smoothing: float,
) -> dict[str, float]:
    """Per-token loss, nll (base 2) and perplexity over this rank's `batches` (lists of positions in
    `dataset`), summed over the ranks."""
    model.eval()
    loss_sum = nll_sum = tokens = 0.0
    for indices in batches:
        batch = dataset.batch(indices).to(runtime.device)
        with runtime.autocast():
            logits = model(batch.src_tokens, batch.prev_tokens)
        loss, nll = label_smoothed_cross_entropy(
            logits, batch.target, epsilon=label_smoothing, ignore_index=model.pad_id
        )
        loss_sum, nll_sum, tokens = loss_sum + loss.item(), nll_sum + nll.item(), tokens + batch.ntokens
    loss_sum, nll_sum, tokens = runtime.all_reduce_sum([loss_sum, nll_sum, tokens])
    nll = nll_sum / max(tokens, 1) / math.log(2)
    return {"loss": loss_sum / max(tokens, 1) / math.log(2), "nll": nll, "ppl": 2**nll}


def validation_bleu(
    model: EncoderDecoder, data: PreparedData, decoding_cfg: Any, device: torch.device, *, sentences: int
) -> float:
    """sacreBLEU of the first `sentences` validation sentences, decoded as at test time."""
    src_path, tgt_path = data.text_paths("valid")
    sources = src_path.read_text(encoding="utf-8").splitlines()[:sentences]
    references = tgt_path.read_text(encoding="utf-8").splitlines()[:sentences]
    translator = Translator([model], data.vocab, decoding_cfg, device=device)
    hypotheses = [hyps[0].text if hyps else "" for hyps in translator.translate(sources)]
    return corpus_scores(hypotheses, references)["bleu"]


def validate(
    runtime: Runtime,
    model: EncoderDecoder,
    data: PreparedData,
    pairs: ParallelDataset | PairSubset,
    batches: list[list[int]],
    *,
    label_smoothing: float,
    decoding_cfg: Any,
    bleu_sentences: int | None,
) -> tuple[dict[str, float], float]:
    """The validation scores (with the seconds each part took) and the metric that picks the best
    checkpoint: BLEU when `bleu_sentences` is given (higher is better), else the negated loss. The
    same on every rank. `pairs` are the valid pairs that fit the model, `batches` this rank's."""
    start = time.perf_counter()
    scores = validation_loss(runtime, model, pairs, batches, label_smoothing=label_smoothing)
    scores["loss_seconds"] = time.perf_counter() - start
    if bleu_sentences is None:
        return scores, -scores["loss"]
    start = time.perf_counter()
    bleu = (
        validation_bleu(model, data, decoding_cfg, runtime.device, sentences=bleu_sentences)
        if runtime.is_main
        else 0.0
    )
    (bleu, seconds) = runtime.all_reduce_sum([bleu, time.perf_counter() - start if runtime.is_main else 0.0])
    scores["bleu"], scores["bleu_seconds"] = bleu, seconds
    return scores, bleu


__all__ = ["ValidationSet", "validation_loss", "validation_bleu", "validate"]
