"""Beam search, greedy decoding and sampling over any `EncoderDecoder` (paper section 6.1).

The paper decodes with beam search, beam size 4 and length penalty alpha = 0.6, and a maximum
output length of input length + 50, terminating early when possible. This file does that for a
batch of sentences and an ensemble of one or more models:

- Every step runs the decoder incrementally on the (sentences x beam) live hypotheses at once; a
  `DecoderState` per model carries the cache and is reordered (`DecoderState.reorder`) as beams are
  chosen, so one search serves every model family.
- An ensemble averages the models' probabilities: log(mean_i p_i) = logsumexp_i(log p_i) - log(n).
- Each step keeps the 2 x beam best extensions of each sentence. Those among the best `beam` that end
  in EOS are finished; the best `beam` that do not end in EOS stay live.
- Stopping rule (fairseq's): a sentence is done once it has `beam` finished hypotheses, or when it
  reaches its maximum length, where EOS is forced. Finished hypotheses are ranked by the GNMT
  length-normalised score log P(Y) / lp(Y), lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016),
  where |Y| counts the output tokens and the final EOS. With alpha > 0 a longer hypothesis still
  live at that point might have ranked higher; like fairseq we do not wait for it, because waiting
  (tensor2tensor's bound) usually means decoding to the maximum length.
- Done sentences leave the batch: their rows are dropped from the encoder output and the decoder
  state, so each step costs less as sentences finish.
- The maximum length is per sentence (max_len_a * source length + max_len_b, source length
  counting its EOS, capped by the model's positions), so a sentence's output does not depend on the
  other sentences of its batch.
- PAD and BOS are never produced. Greedy decoding is beam search with beam 1.

Sampling (`sampling=True`) draws `beam` independent samples per sentence with temperature, top-k and
top-p (nucleus) filtering, from a `torch.Generator` seeded with `cfg.seed`. Samples are ranked by
the same length-normalised score of the model's log-probability (the unfiltered, temperature-free
distribution), so `nbest` picks the most probable of the samples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from transformer_mt.models.interface import DecoderState, EncoderDecoder, EncoderOutput


@dataclass
class DecodingConfig:
    """How to decode. Defaults are the paper's (section 6.1): beam 4, alpha 0.6, length input + 50."""

    beam: int = 4
    lenpen: float = 0.6  # alpha of the GNMT length penalty ((5 + |Y|) / 6) ** alpha; 0 ranks by log P
    max_len_a: float = 1.0  # maximum output length = max_len_a * source length + max_len_b
    max_len_b: int = 50
    nbest: int = 1  # hypotheses returned per sentence, best first
    batch_tokens: int = 4096  # padded source tokens per decoding batch (not the training max_tokens)
    sampling: bool = False  # draw `beam` samples per sentence instead of searching
    sampling_topk: int = 0  # sample from the k most probable tokens only (0: all)
    sampling_topp: float = 1.0  # sample from the smallest set of tokens with this much probability
    temperature: float = 1.0  # divides the log-probabilities before sampling
    seed: int = 1  # seed of the sampling generator

    def __post_init__(self) -> None:
        problems = []
        if self.beam < 1:
            problems.append(f"beam={self.beam} must be at least 1")
        if not 1 <= self.nbest <= max(self.beam, 1):
            problems.append(f"nbest={self.nbest} must be between 1 and beam={self.beam}")
        if not math.isfinite(self.lenpen):
            problems.append(f"lenpen={self.lenpen} must be a finite number")
        if not (0 <= self.max_len_a < math.inf and self.max_len_b >= 0):
            problems.append(f"max_len_a={self.max_len_a} and max_len_b={self.max_len_b} must be >= 0")
        if self.batch_tokens < 1:
            problems.append(f"batch_tokens={self.batch_tokens} must be at least 1")
        if self.sampling_topk < 0:
            problems.append(f"sampling_topk={self.sampling_topk} must be >= 0 (0 turns it off)")
        if not 0.0 < self.sampling_topp <= 1.0:
            problems.append(f"sampling_topp={self.sampling_topp} must be in (0, 1] (1 turns it off)")
        if not 0.0 < self.temperature < math.inf:
            problems.append(f"temperature={self.temperature} must be a positive number")
        if not self.sampling and (self.sampling_topk or self.sampling_topp < 1.0 or self.temperature != 1.0):
            problems.append("sampling_topk, sampling_topp and temperature only apply with sampling=true")
        if problems:
            raise ValueError("invalid decoding config: " + "; ".join(problems))

    @classmethod
    def from_stored(cls, stored: dict[str, Any], **overrides: Any) -> DecodingConfig:
        """The settings a training run stored in its checkpoint (how it decoded for validation),
        with `overrides` on top. Names from older versions are mapped; keys no longer known are
        dropped from `stored` but refused in `overrides`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown decoding option(s) {unknown}; options: {', '.join(sorted(known))}")
        settings = {RENAMED.get(name, name): value for name, value in stored.items()}
        return cls(**{**{name: value for name, value in settings.items() if name in known}, **overrides})


RENAMED = {"max_tokens": "batch_tokens"}  # DecodingConfig fields under their names in older checkpoints


@dataclass
class Hypothesis:
    """One output sentence. `tokens` hold neither BOS nor EOS; the scores do include the EOS step."""

    tokens: list[int]
    score: float  # logprob / length_penalty(len(tokens) + 1): what hypotheses are ranked by
    logprob: float  # sum of positional_scores
    positional_scores: list[float]  # log-probability of each token, then of the EOS


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(
    src_tokens: Tensor, cfg: DecodingConfig, pad_id: int, models: Sequence[EncoderDecoder]
) -> Tensor:
    """(batch,) the most tokens (without EOS) each sentence may produce before EOS is forced."""
    src_lengths = src_tokens.ne(pad_id).sum(dim=1).tolist()  # counting the source EOS
    lengths = [int(cfg.max_len_a * n + cfg.max_len_b) for n in src_lengths]  # floor, in float64
    max_len = torch.tensor(lengths, dtype=torch.long, device=src_tokens.device)
    positions = [m.max_positions for m in models if m.max_positions is not None]
    if positions:  # the decoder reads BOS + the tokens, so it sees at most max_len + 1 positions
        max_len = max_len.clamp(max=min(positions) - 1)
    return max_len.clamp(min=0)


def generate(
    models: Sequence[EncoderDecoder],
    src_tokens: Tensor,
    cfg: DecodingConfig,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> list[list[Hypothesis]]:
    """Decode a batch: for each sentence, up to `cfg.nbest` hypotheses, best first.

    `src_tokens` is (batch, src_len): source ids and EOS, right-padded with PAD, on the models'
    device. The models are put in eval mode for the search and given back in the mode they had.
    """
    if not models:
        raise ValueError("generate needs at least one model")
    if src_tokens.dim() != 2:
        raise ValueError(f"src_tokens must be (batch, src_len), got shape {tuple(src_tokens.shape)}")
    if src_tokens.size(0) == 0:
        return []
    special = _SpecialIds(bos=bos_id, eos=eos_id, pad=pad_id)
    with torch.inference_mode(), _eval_mode(models):
        max_len = max_output_lengths(src_tokens, cfg, pad_id, models)
        ensemble = _Ensemble(models, src_tokens, copies=cfg.beam)
        if cfg.sampling:
            return _sample(ensemble, max_len, cfg, special)
        return _beam_search(ensemble, max_len, cfg, special)


@dataclass(frozen=True)
class _SpecialIds:
    bos: int
    eos: int
    pad: int


@contextlib.contextmanager
def _eval_mode(models: Sequence[EncoderDecoder]) -> Iterator[None]:
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, was_training, strict=True):
            m.train(mode)


class _Ensemble:
    """The models' encoder outputs and decoder states, and one decoding step of their average."""

    def __init__(self, models: Sequence[EncoderDecoder], src_tokens: Tensor, copies: int) -> None:
        # Encode each sentence once, then repeat its rows `copies` times: row b * copies + j.
        rows = torch.arange(src_tokens.size(0), device=src_tokens.device).repeat_interleave(copies)
        self.models = list(models)
        self.memories: list[EncoderOutput] = [m.encode(src_tokens).reorder(rows) for m in models]
        self.states: list[DecoderState] = [DecoderState() for _ in models]

    def log_probs(self, prev_tokens: Tensor) -> Tensor:
        """(rows, vocab) fp32 log-probabilities of the next token, given the newest token (rows, 1)."""
        per_model = []
        for i, model in enumerate(self.models):
            logits, state = model.decode(prev_tokens, self.memories[i], self.states[i])
            if state is None:
                raise RuntimeError(f"{type(model).__name__}.decode returned no DecoderState when given one")
            self.states[i] = state
            per_model.append(torch.log_softmax(logits[:, -1, :].float(), dim=-1))  # (rows, vocab)
        if len(per_model) == 1:
            return per_model[0]
        sizes = {lp.size(-1) for lp in per_model}
        if len(sizes) > 1:
            raise ValueError(f"the ensemble's models have different vocabulary sizes {sorted(sizes)}")
        return torch.logsumexp(torch.stack(per_model), dim=0) - math.log(len(per_model))

    def reorder_states(self, rows: Tensor, *, same_sources: bool = False) -> None:
        for state in self.states:
            state.reorder(rows, same_sources=same_sources)

    def reorder_memories(self, rows: Tensor) -> None:
        self.memories = [memory.reorder(rows) for memory in self.memories]


def _restrict(lprobs: Tensor, forced_eos: Tensor, special: _SpecialIds) -> Tensor:
    """Forbid PAD and BOS everywhere, and everything but EOS on rows at their maximum length; NaN
    (a broken model) counts as -inf."""
    lprobs.nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    lprobs[:, special.pad] = -math.inf
    lprobs[:, special.bos] = -math.inf
    if forced_eos.any():  # only the forced rows are rewritten, not a (rows, vocab) mask every step
        forced = forced_eos.nonzero().squeeze(1)
        eos = lprobs[forced, special.eos]
        lprobs[forced] = -math.inf
        lprobs[forced, special.eos] = eos
    return lprobs


# ----------------------------------------------------------------------------------------------
# Beam search


def _top_candidates(scores: Tensor, lprobs: Tensor, beam: int) -> tuple[Tensor, Tensor, Tensor]:
    """The 2 x beam best extensions of each sentence: (scores, beam index, token), each (sent, 2 beam)."""
    vocab = lprobs.size(1)
    cand = (scores.unsqueeze(1) + lprobs).view(-1, beam * vocab)  # (sent, beam * vocab)
    top_scores, top_index = cand.topk(min(2 * beam, beam * vocab), dim=1)
    return top_scores, torch.div(top_index, vocab, rounding_mode="floor"), top_index % vocab


def _finishing(cand_tokens: Tensor, cand_scores: Tensor, num_finished: Tensor, beam: int, eos: int) -> Tensor:
    """(sent, beam) bool: the EOS candidates among the best `beam` that fill the free finished slots."""
    is_eos = cand_tokens[:, :beam].eq(eos) & cand_scores[:, :beam].isfinite()
    free_slots = (beam - num_finished).unsqueeze(1)  # (sent, 1)
    return is_eos & (is_eos.cumsum(dim=1) <= free_slots)


def _live_positions(cand_tokens: Tensor, beam: int, eos: int) -> Tensor:
    """(sent, beam): positions of the best `beam` candidates that do not end in EOS, best first.

    Each beam row gives at most one EOS candidate, so at least `beam` of the 2 x beam are not EOS.
    """
    rank = torch.arange(cand_tokens.size(1), device=cand_tokens.device)
    key = cand_tokens.eq(eos).long() * cand_tokens.size(1) + rank  # EOS candidates sort last
    return key.topk(beam, dim=1, largest=False, sorted=True).indices


def _beam_search(
    ensemble: _Ensemble, max_len: Tensor, cfg: DecodingConfig, special: _SpecialIds
) -> list[list[Hypothesis]]:
    beam, device = cfg.beam, max_len.device
    num_sent = max_len.size(0)
    num_steps = int(max_len.max()) + 1  # step t predicts token t; EOS is forced at t = max_len
    tokens = torch.full((num_sent * beam, num_steps + 1), special.pad, dtype=torch.long, device=device)
    tokens[:, 0] = special.bos  # (rows, 1 + steps): BOS, then the tokens chosen so far
    positional = torch.zeros(num_sent * beam, num_steps, device=device)  # (rows, steps)
    scores = torch.zeros(num_sent, beam, device=device)
    scores[:, 1:] = -math.inf  # all beams start identical: let only the first one extend at step 0
    scores = scores.view(-1)  # (rows,) cumulative log-probabilities
    sentence = torch.arange(num_sent, device=device)  # (sent,) input index of each active sentence
    num_finished = torch.zeros(num_sent, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(num_sent)]
    beam_offsets = torch.arange(beam, device=device)
    all_rows = torch.arange(num_sent * beam, device=device)

    for step in range(num_steps):
        lprobs = ensemble.log_probs(tokens[:, step : step + 1])  # (rows, vocab)
        lprobs = _restrict(lprobs, max_len.repeat_interleave(beam).eq(step), special)
        cand_scores, cand_beams, cand_tokens = _top_candidates(scores, lprobs, beam)  # (sent, 2 beam)
        cand_rows = cand_beams + (torch.arange(sentence.size(0), device=device) * beam).unsqueeze(1)

        ending = _finishing(cand_tokens, cand_scores, num_finished, beam, special.eos)  # (sent, beam)
        if ending.any():  # record the hypotheses that end with EOS at this step
            which = ending.nonzero()  # (m, 2): active sentence, candidate position
            ended = cand_rows[which[:, 0], which[:, 1]]  # (m,) their rows
            eos_lprobs = lprobs[ended, special.eos].unsqueeze(1)  # (m, 1)
            _record(
                finished,
                sentence[which[:, 0]],
                tokens[ended, 1 : step + 1],
                torch.cat([positional[ended, :step], eos_lprobs], dim=1),
                cand_scores[which[:, 0], which[:, 1]],
                length_penalty(step + 1, cfg.lenpen),
            )
            num_finished += ending.sum(dim=1)
        done = num_finished.ge(beam) | max_len.le(step)  # (sent,)

        live = _live_positions(cand_tokens, beam, special.eos)  # (sent, beam)
        keep = (~done).nonzero().squeeze(1)  # (kept,)
        if keep.numel() == 0:
            break
        rows = cand_rows.gather(1, live)[keep].view(-1)  # (kept * beam,) rows (of this step) to extend
        new_tokens = cand_tokens.gather(1, live)[keep].view(-1)
        scores = cand_scores.gather(1, live)[keep].view(-1)
        dropping = keep.numel() < sentence.size(0)
        if dropping:  # drop done sentences from the batch
            ensemble.reorder_memories((keep.unsqueeze(1) * beam + beam_offsets).view(-1))
            sentence, num_finished, max_len = sentence[keep], num_finished[keep], max_len[keep]
        if dropping or not torch.equal(rows, all_rows[: rows.numel()]):  # greedy: never reordered
            tokens, positional = tokens[rows], positional[rows]
            # Each kept row stays with its sentence, so while none leaves, cross-attention stays put.
            ensemble.reorder_states(rows, same_sources=not dropping)
        tokens[:, step + 1] = new_tokens
        positional[:, step] = lprobs[rows, new_tokens]

    return [_best(hyps, cfg.nbest) for hyps in finished]


def _record(
    finished: list[list[Hypothesis]],
    sentences: Tensor,
    tokens: Tensor,
    positional: Tensor,
    logprobs: Tensor,
    penalty: float,
) -> None:
    """Append a hypothesis per row to its sentence's list. tokens (m, len), positional (m, len + 1)."""
    rows = zip(sentences.tolist(), tokens.tolist(), positional.tolist(), logprobs.tolist(), strict=True)
    for sent, toks, pos, logprob in rows:
        finished[sent].append(Hypothesis(toks, logprob / penalty, logprob, pos))


def _best(hyps: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    return sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest]


# ----------------------------------------------------------------------------------------------
# Sampling


def _draw(lprobs: Tensor, cfg: DecodingConfig, generator: torch.Generator) -> Tensor:
    """(rows,) one token per row from the temperature-scaled, top-k and top-p filtered distribution."""
    logits = lprobs / cfg.temperature  # (rows, vocab)
    if cfg.sampling_topk > 0:
        kth_best = logits.topk(min(cfg.sampling_topk, logits.size(1)), dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, -math.inf)  # ties with the k-th stay in
    if cfg.sampling_topp < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        probs = sorted_logits.softmax(dim=1)
        mass_before = probs.cumsum(dim=1) - probs  # the most probable token always stays
        sorted_logits = sorted_logits.masked_fill(mass_before >= cfg.sampling_topp, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)


def _sample(
    ensemble: _Ensemble, max_len: Tensor, cfg: DecodingConfig, special: _SpecialIds
) -> list[list[Hypothesis]]:
    """`beam` independent samples per sentence; each row leaves the batch when it draws EOS."""
    device, num_sent = max_len.device, max_len.size(0)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    owner = torch.arange(num_sent, device=device).repeat_interleave(cfg.beam)  # (rows,) sentence
    max_len = max_len.repeat_interleave(cfg.beam)  # (rows,)
    num_steps = int(max_len.max()) + 1
    tokens = torch.full((owner.size(0), num_steps + 1), special.pad, dtype=torch.long, device=device)
    tokens[:, 0] = special.bos
    positional = torch.zeros(owner.size(0), num_steps, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(num_sent)]

    for step in range(num_steps):
        lprobs = _restrict(ensemble.log_probs(tokens[:, step : step + 1]), max_len.eq(step), special)
        drawn = _draw(lprobs, cfg, generator)  # (rows,)
        tokens[:, step + 1] = drawn
        positional[:, step] = lprobs.gather(1, drawn.unsqueeze(1)).squeeze(1)
        ended = drawn.eq(special.eos)
        if not ended.any():
            continue
        scores = positional[ended, : step + 1]  # (m, step + 1)
        _record(
            finished,
            owner[ended],
            tokens[ended, 1 : step + 1],
            scores,
            scores.sum(dim=1),
            length_penalty(step + 1, cfg.lenpen),
        )
        keep = (~ended).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        tokens, positional, owner, max_len = tokens[keep], positional[keep], owner[keep], max_len[keep]
        ensemble.reorder_memories(keep)
        ensemble.reorder_states(keep)

    return [_best(hyps, cfg.nbest) for hyps in finished]


__all__ = ["DecodingConfig", "Hypothesis", "generate", "length_penalty", "max_output_lengths"]
