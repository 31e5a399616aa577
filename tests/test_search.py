"""Beam search, greedy decoding and sampling (transformer_mt/decoding/search.py).

The toy models are real `EncoderDecoder`s: `TableModel` gives a next-token distribution that is a
fixed function of (source, prefix), so hypotheses and scores can be computed by hand; `TinyGRU` is a
small neural model whose incremental decoding keeps its hidden state in a `DecoderState`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from transformer_mt.decoding.search import DecodingConfig, Hypothesis, generate, length_penalty
from transformer_mt.models.interface import EncoderDecoder, EncoderOutput

PAD, UNK, BOS, EOS = 0, 1, 2, 3
IDS = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}

Distribution = dict[int, float]  # token -> probability; unlisted tokens get a tiny probability


class TableModel(EncoderDecoder):
    """Next-token probabilities looked up as `table(source, prefix)`, both tuples of ids.

    The source excludes PAD (it keeps its EOS); the prefix excludes BOS.
    """

    def __init__(
        self,
        table: Callable[[tuple[int, ...], tuple[int, ...]], Distribution],
        vocab_size: int = 10,
        max_positions: int | None = None,
    ) -> None:
        super().__init__()
        self.table, self.vocab_size, self._max_positions, self.pad_id = table, vocab_size, max_positions, PAD

    @property
    def max_positions(self) -> int | None:
        return self._max_positions

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        states = torch.zeros(*src_tokens.shape, 1)
        return EncoderOutput(states, src_tokens.eq(PAD), extras={"src": src_tokens})

    def _logits(self, src: Tensor, prefix: Tensor) -> Tensor:
        source = tuple(t for t in src.tolist() if t != PAD)
        logits = torch.full((self.vocab_size,), math.log(1e-6))
        for token, prob in self.table(source, tuple(prefix.tolist())).items():
            logits[token] = math.log(prob)
        return logits

    def decode(self, prev_tokens, memory, state):
        src = memory.extras["src"]
        if state is None:  # every position of prev_tokens
            rows = [
                torch.stack(
                    [self._logits(src[b], prev_tokens[b, 1 : p + 1]) for p in range(prev_tokens.size(1))]
                )
                for b in range(prev_tokens.size(0))
            ]
            return torch.stack(rows), None
        seen = state.cache.get("prev")
        seen = prev_tokens if seen is None else torch.cat([seen, prev_tokens], dim=1)
        state.cache["prev"] = seen
        state.steps += 1
        logits = torch.stack([self._logits(src[b], seen[b, 1:]) for b in range(seen.size(0))])
        return logits.unsqueeze(1), state


def random_table(seed: int, words: range = range(4, 10), eos_rate: float = 0.25) -> Callable:
    """A fixed random distribution per (source, prefix); EOS gets likelier as the prefix grows."""

    def table(source: tuple[int, ...], prefix: tuple[int, ...]) -> Distribution:
        rng = random.Random(f"{seed}|{source}|{prefix}")
        weights = {t: rng.random() ** 3 for t in words}
        weights[EOS] = rng.random() * eos_rate * (1 + len(prefix))
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    return table


class TinyGRU(EncoderDecoder):
    """Embeddings, a masked mean of the source, and a GRU cell whose hidden state is the cache."""

    def __init__(self, vocab_size: int = 12, dim: int = 16, seed: int = 0, max_positions: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.pad_id, self._max_positions = PAD, max_positions
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.bridge = nn.Linear(dim, dim)
        self.cell = nn.GRUCell(dim, dim)
        self.out = nn.Linear(2 * dim, vocab_size)
        with torch.no_grad():  # peaky distributions, and EOS likely enough to end sentences
            self.out.weight.mul_(4.0)
            self.out.bias[EOS] += 1.5
        self.dropout = nn.Dropout(0.5)  # active in training mode: generate must switch it off

    @property
    def max_positions(self) -> int | None:
        return self._max_positions

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        return EncoderOutput(self.embed(src_tokens), src_tokens.eq(PAD))  # (batch, src_len, dim)

    def decode(self, prev_tokens, memory, state):
        keep = (~memory.padding_mask).unsqueeze(2).float()
        context = (memory.states * keep).sum(1) / keep.sum(1)  # (batch, dim)
        hidden = None if state is None else state.cache.get("hidden")
        if hidden is None:
            hidden = torch.tanh(self.bridge(context))
        outputs = []
        for p in range(prev_tokens.size(1)):
            hidden = self.cell(self.dropout(self.embed(prev_tokens[:, p])), hidden)
            outputs.append(self.out(torch.cat([hidden, context], dim=1)))
        logits = torch.stack(outputs, dim=1)  # (batch, len, vocab)
        if state is None:
            return logits, None
        state.cache["hidden"] = hidden
        state.steps += prev_tokens.size(1)
        return logits, state


class RecomputeFull(EncoderDecoder):
    """Wraps a model: each incremental step re-runs full decoding over the whole prefix (no real cache)."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model, self.pad_id = model, model.pad_id

    def encode(self, src_tokens):
        return self.model.encode(src_tokens)

    def decode(self, prev_tokens, memory, state):
        seen = state.cache.get("prev")
        seen = prev_tokens if seen is None else torch.cat([seen, prev_tokens], dim=1)
        state.cache["prev"] = seen
        logits, _ = self.model.decode(seen, memory, None)
        return logits[:, -1:], state


class CastLogits(EncoderDecoder):
    """Wraps a model and returns its logits in a low-precision dtype, as autocast would."""

    def __init__(self, model: EncoderDecoder, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype, self.pad_id = model, dtype, model.pad_id

    def encode(self, src_tokens):
        return self.model.encode(src_tokens)

    def decode(self, prev_tokens, memory, state):
        logits, state = self.model.decode(prev_tokens, memory, state)
        return logits.to(self.dtype), state


def batch(*sentences: list[int]) -> Tensor:
    """Right-padded (batch, src_len) source tokens, each sentence followed by EOS."""
    width = max(len(s) for s in sentences) + 1
    return torch.tensor([s + [EOS] + [PAD] * (width - len(s) - 1) for s in sentences])


def config(**overrides) -> DecodingConfig:
    return DecodingConfig(**{"beam": 4, "lenpen": 0.0, "max_len_a": 0.0, "max_len_b": 8, **overrides})


def best_tokens(results: list[list[Hypothesis]]) -> list[list[int]]:
    return [hyps[0].tokens for hyps in results]


def sequence_logprob(model: EncoderDecoder, src: list[int], tokens: list[int]) -> float:
    logits = model(batch(src), torch.tensor([[BOS] + tokens]))[0]
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    return sum(lprobs[i, t].item() for i, t in enumerate(tokens + [EOS]))


# ---------------------------------------------------------------------------------------------
# Reference searches: one sentence at a time, full decoding of the prefix at every step.


@torch.no_grad()
def reference_greedy(model: EncoderDecoder, src: list[int], max_len: int) -> list[int]:
    model.eval()
    tokens: list[int] = []
    while len(tokens) < max_len:
        lprobs = torch.log_softmax(model(batch(src), torch.tensor([[BOS] + tokens]))[0, -1].float(), -1)
        lprobs[[PAD, BOS]] = -math.inf
        token = int(lprobs.argmax())
        if token == EOS:
            break
        tokens.append(token)
    return tokens


@torch.no_grad()
def reference_beam_search(
    model: EncoderDecoder, src: list[int], beam: int, lenpen: float, max_len: int
) -> list[tuple[list[int], float]]:
    """The documented algorithm, written plainly: keep 2 beam candidates; EOS among the best `beam`
    finishes; stop at `beam` finished hypotheses or at max_len (EOS forced)."""
    model.eval()
    live: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[list[int], float, float]] = []
    for step in range(max_len + 1):
        candidates = []
        for tokens, score in live:
            lprobs = torch.log_softmax(model(batch(src), torch.tensor([[BOS] + tokens]))[0, -1].float(), -1)
            for token, lp in enumerate(lprobs.tolist()):
                if token in (PAD, BOS) or (step == max_len and token != EOS):
                    continue
                candidates.append((tokens + [token], score + lp))
        candidates.sort(key=lambda c: c[1], reverse=True)
        candidates = candidates[: 2 * beam]
        for tokens, score in candidates[:beam]:
            if tokens[-1] == EOS and len(finished) < beam:
                finished.append((tokens[:-1], score / length_penalty(step + 1, lenpen), score))
        if len(finished) >= beam or step == max_len:
            break
        live = [c for c in candidates if c[0][-1] != EOS][:beam]
    finished.sort(key=lambda f: f[1], reverse=True)
    return [(tokens, score) for tokens, score, _ in finished]


# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_rejects_impossible_values():
    for bad in (
        {"beam": 0},
        {"beam": 2, "nbest": 3},
        {"sampling": True, "sampling_topp": 0.0},
        {"sampling": True, "temperature": 0.0},
        {"batch_tokens": 0},
        {"sampling_topk": 5},  # would be silently ignored without sampling
    ):
        with pytest.raises(ValueError, match="invalid decoding config"):
            DecodingConfig(**bad)


def test_default_yaml_composes_to_the_paper_defaults():
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(group="decoding", name="decoding_schema", node=DecodingConfig)
    configs = Path(__file__).parents[1] / "transformer_mt" / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        composed = compose(overrides=["+decoding=default"])
    cfg = OmegaConf.to_object(composed.decoding)
    assert cfg == DecodingConfig()
    assert (cfg.beam, cfg.lenpen, cfg.max_len_a, cfg.max_len_b) == (4, 0.6, 1.0, 50)


def test_length_penalty_is_gnmt():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(13, 0.5) == pytest.approx(math.sqrt(3.0))
    assert length_penalty(40, 0.0) == 1.0


# ---------------------------------------------------------------------------------------------
# Beam search


def greedy_trap(source, prefix) -> Distribution:
    """Greedy takes 4 (0.6) then at best 7 (0.4): 0.24. Beam finds 5 (0.4) then 7 (0.9): 0.36."""
    table = {(): {4: 0.6, 5: 0.4}, (4,): {6: 0.3, 7: 0.4, 8: 0.3}, (5,): {7: 0.9, 8: 0.1}}
    return table.get(prefix, {EOS: 1.0})


def test_beam_finds_the_sequence_greedy_misses():
    model = TableModel(greedy_trap)
    (greedy,) = generate([model], batch([9]), config(beam=1), **IDS)
    (beamed,) = generate([model], batch([9]), config(beam=2), **IDS)
    assert greedy[0].tokens == [4, 7]
    assert beamed[0].tokens == [5, 7]
    assert beamed[0].logprob == pytest.approx(math.log(0.36), abs=1e-4)
    assert greedy[0].logprob == pytest.approx(math.log(0.24), abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_beam_one_equals_greedy(seed):
    table_model, gru = TableModel(random_table(seed)), TinyGRU(seed=seed)
    for model, vocab in ((table_model, 10), (gru, 12)):
        sources = [[random.Random(seed * 7 + i).randrange(4, vocab) for _ in range(1 + i)] for i in range(4)]
        results = generate([model], batch(*sources), config(beam=1, max_len_b=10), **IDS)
        assert best_tokens(results) == [reference_greedy(model, s, 10) for s in sources]


@pytest.mark.parametrize(("seed", "beam", "lenpen"), [(0, 2, 0.0), (1, 3, 0.6), (2, 4, 1.0), (3, 5, 0.6)])
def test_generate_matches_reference_beam_search(seed, beam, lenpen):
    model = TableModel(random_table(seed, eos_rate=0.15))
    sources = [[4], [5, 6, 7], [8, 8], [9, 4, 5, 6]]
    results = generate([model], batch(*sources), config(beam=beam, nbest=beam, lenpen=lenpen), **IDS)
    for src, hyps in zip(sources, results, strict=True):
        expected = reference_beam_search(model, src, beam, lenpen, max_len=8)
        assert [h.tokens for h in hyps] == [tokens for tokens, _ in expected]
        assert [h.score for h in hyps] == pytest.approx([score for _, score in expected], abs=1e-5)


def test_cached_decoding_matches_full_recompute():
    gru = TinyGRU(seed=3)
    sources = [[4, 5], [6, 7, 8, 9, 10], [11], [5, 5, 5]]
    cfg = config(beam=3, nbest=3, lenpen=0.6, max_len_b=12)
    cached = generate([gru], batch(*sources), cfg, **IDS)
    recomputed = generate([RecomputeFull(gru)], batch(*sources), cfg, **IDS)
    for fast, slow, src in zip(cached, recomputed, sources, strict=True):
        assert [h.tokens for h in fast] == [h.tokens for h in slow]
        assert [h.score for h in fast] == pytest.approx([h.score for h in slow], abs=1e-5)
        reference = reference_beam_search(gru, src, beam=3, lenpen=0.6, max_len=12)
        assert [h.tokens for h in fast] == [tokens for tokens, _ in reference]


def test_batch_composition_does_not_change_outputs():
    sources = [[4], [5, 6, 7, 8, 9], [6, 6], [7, 8, 9], [9, 9, 9, 9, 9, 9, 9]]
    for model in (TableModel(random_table(5, eos_rate=0.2)), TinyGRU(seed=5)):
        cfg = config(beam=3, nbest=2, lenpen=0.6, max_len_a=1.0, max_len_b=3)
        alone = [generate([model], batch(s), cfg, **IDS)[0] for s in sources]
        together = generate([model], batch(*sources), cfg, **IDS)
        reversed_pairs = generate([model], batch(sources[3], sources[1]), cfg, **IDS)
        assert [[h.tokens for h in hyps] for hyps in together] == [[h.tokens for h in hyps] for hyps in alone]
        assert [h.tokens for h in reversed_pairs[1]] == [h.tokens for h in alone[1]]
        for a, b in zip(alone, together, strict=True):
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_nbest_are_distinct_ordered_and_counted():
    model = TableModel(random_table(11, eos_rate=0.3))
    results = generate([model], batch([4, 5], [6]), config(beam=5, nbest=3, lenpen=0.6), **IDS)
    for hyps in results:
        assert len(hyps) == 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 3
        for h in hyps:
            assert h.logprob == pytest.approx(sum(h.positional_scores), abs=1e-5)
            assert len(h.positional_scores) == len(h.tokens) + 1
            assert h.score == pytest.approx(h.logprob / length_penalty(len(h.tokens) + 1, 0.6), abs=1e-6)


def short_or_long(source, prefix) -> Distribution:
    """[4] then EOS: p = 0.5. [5, 6, 7] then EOS: p = 0.5 * 0.95 ** 3. Other prefixes never end."""
    table = {
        (): {4: 0.5, 5: 0.5},
        (4,): {EOS: 1.0},
        (5,): {6: 0.95, 8: 0.05},
        (5, 6): {7: 0.95, 8: 0.05},
        (5, 6, 7): {EOS: 0.95, 8: 0.05},
    }
    return table.get(prefix, {8: 0.5, 9: 0.5})


def test_length_penalty_decides_between_short_and_long():
    model = TableModel(short_or_long)
    short_logprob, long_logprob = math.log(0.5), math.log(0.5 * 0.95**3)
    for alpha, winner in ((0.0, [4]), (1.0, [5, 6, 7])):
        (hyps,) = generate([model], batch([9]), config(beam=2, nbest=2, lenpen=alpha), **IDS)
        assert hyps[0].tokens == winner
        by_tokens = {tuple(h.tokens): h for h in hyps}
        # by hand: lp(2) = (7/6)^alpha for [4] EOS, lp(4) = (9/6)^alpha for [5, 6, 7] EOS
        assert by_tokens[(4,)].score == pytest.approx(short_logprob / (7 / 6) ** alpha, abs=1e-4)
        assert by_tokens[(5, 6, 7)].score == pytest.approx(long_logprob / (9 / 6) ** alpha, abs=1e-4)


def never_ends(source, prefix) -> Distribution:
    return {4 + len(prefix) % 3: 0.9, 7: 0.1, EOS: 1e-9}  # EOS below every other token


def test_max_length_is_respected_and_eos_forced():
    model = TableModel(never_ends)
    cfg = config(beam=2, max_len_a=2.0, max_len_b=1)  # 2 * (source + EOS) + 1
    results = generate([model], batch([4], [4, 4, 4]), cfg, **IDS)
    assert [len(tokens) for tokens in best_tokens(results)] == [5, 9]
    capped = generate([TableModel(never_ends, max_positions=4)], batch([4, 4, 4]), cfg, **IDS)
    assert len(capped[0][0].tokens) == 3  # BOS + 3 tokens fill the 4 positions
    assert capped[0][0].positional_scores[-1] == pytest.approx(math.log(1e-9), abs=0.1)  # forced EOS
    empty = generate([model], batch([4]), config(beam=3, max_len_b=0), **IDS)
    assert empty[0][0].tokens == []


def prefers_specials(source, prefix) -> Distribution:
    return {PAD: 0.5, BOS: 0.3, 4: 0.15, EOS: 0.05} if len(prefix) < 3 else {BOS: 0.9, EOS: 0.1}


def test_never_outputs_pad_or_bos():
    for cfg in (config(beam=3, nbest=3), config(beam=1), config(beam=3, sampling=True, temperature=2.0)):
        for hyps in generate([TableModel(prefers_specials)], batch([4], [5, 6]), cfg, **IDS):
            assert hyps and all(PAD not in h.tokens and BOS not in h.tokens for h in hyps)


def broken_after_4(source, prefix) -> Distribution:
    """After 4 the model breaks (NaN everywhere); after 5 it ends the sentence."""
    table = {(): {4: 0.6, 5: 0.4}, (4,): dict.fromkeys(range(10), math.nan), (5,): {EOS: 1.0}}
    return table.get(prefix, {EOS: 1.0})


@pytest.mark.parametrize("beam", [1, 2])
def test_a_row_of_nan_is_never_extended(beam):
    """NaN log-probabilities count as -inf: the broken hypothesis dies and the search goes on with
    the others (NaN would otherwise win every comparison and crowd out the good candidates)."""
    (hyps,) = generate([TableModel(broken_after_4)], batch([9]), config(beam=beam, nbest=1), **IDS)
    if beam == 1:  # greedy took 4 and has nowhere to go
        assert hyps == [] or not math.isfinite(hyps[0].score)
    else:
        assert hyps[0].tokens == [5] and hyps[0].logprob == pytest.approx(math.log(0.4), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Ensembles, precision, modes


def test_ensemble_of_a_model_with_itself_equals_the_model():
    gru = TinyGRU(seed=8)
    sources = [[4, 5, 6], [7], [8, 9]]
    cfg = config(beam=4, nbest=2, lenpen=0.6)
    single = generate([gru], batch(*sources), cfg, **IDS)
    double = generate([gru, gru], batch(*sources), cfg, **IDS)
    assert [[h.tokens for h in x] for x in single] == [[h.tokens for h in x] for x in double]
    for a, b in zip(single, double, strict=True):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_ensemble_averages_probabilities():
    first = TableModel(lambda s, p: {4: 0.9, 5: 0.1} if not p else {EOS: 1.0})
    second = TableModel(lambda s, p: {4: 0.02, 5: 0.98} if not p else {EOS: 1.0})
    (hyps,) = generate([first, second], batch([6]), config(beam=2, nbest=2), **IDS)
    by_tokens = {tuple(h.tokens): h for h in hyps}
    # arithmetic mean of probabilities: 0.46 and 0.54 (a mean of log-probabilities would prefer 4)
    assert hyps[0].tokens == [5]
    assert by_tokens[(5,)].positional_scores[0] == pytest.approx(math.log(0.54), abs=1e-4)
    assert by_tokens[(4,)].positional_scores[0] == pytest.approx(math.log(0.46), abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_scored_in_fp32(dtype):
    gru = TinyGRU(seed=2)
    results = generate([CastLogits(gru, dtype)], batch([4, 5], [6]), config(beam=3, lenpen=0.6), **IDS)
    for hyps in results:
        assert hyps and all(math.isfinite(h.score) for h in hyps)
        assert isinstance(hyps[0].score, float)


def test_models_are_decoded_in_eval_mode_and_given_back_in_their_mode():
    gru = TinyGRU(seed=4).train()
    sources = [[4, 5, 6], [7, 8]]
    in_training_mode = generate([gru], batch(*sources), config(beam=2, nbest=2), **IDS)
    assert gru.training
    in_eval_mode = generate([gru.eval()], batch(*sources), config(beam=2, nbest=2), **IDS)
    # with dropout 0.5 left on, the scores would differ
    for a, b in zip(in_training_mode, in_eval_mode, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Sampling


def sampling(**overrides) -> DecodingConfig:
    return config(**{"beam": 4, "nbest": 4, "sampling": True, "max_len_b": 10, **overrides})


def test_sampling_is_reproducible_with_a_seed():
    model = TinyGRU(seed=6)
    src = batch([4, 5], [6, 7, 8])
    first = generate([model], src, sampling(seed=3, temperature=1.5), **IDS)
    again = generate([model], src, sampling(seed=3, temperature=1.5), **IDS)
    other = generate([model], src, sampling(seed=4, temperature=1.5), **IDS)
    tokens = [[h.tokens for h in hyps] for hyps in first]
    assert tokens == [[h.tokens for h in hyps] for hyps in again]
    assert tokens != [[h.tokens for h in hyps] for hyps in other]
    assert all(len(hyps) == 4 for hyps in first)


@pytest.mark.parametrize("filtering", [{"sampling_topk": 1}, {"sampling_topp": 1e-6}])
def test_sampling_from_the_single_best_token_equals_greedy(filtering):
    model = TinyGRU(seed=9)
    sources = [[4, 5], [6], [7, 8, 9]]
    greedy = generate([model], batch(*sources), config(beam=1, max_len_b=10), **IDS)
    sampled = generate([model], batch(*sources), sampling(temperature=3.0, **filtering), **IDS)
    for best, samples in zip(greedy, sampled, strict=True):
        assert all(s.tokens == best[0].tokens for s in samples)
        assert samples[0].score == pytest.approx(best[0].score, abs=1e-5)


def test_sampling_scores_are_model_logprobs():
    model = TableModel(random_table(1))
    (samples,) = generate([model], batch([4, 5]), sampling(sampling_topk=3, temperature=0.7), **IDS)
    for h in samples:
        assert h.logprob == pytest.approx(sequence_logprob(model, [4, 5], h.tokens), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# A real Transformer, when the models package has one


@pytest.mark.parametrize("beam", [1, 4])
def test_transformer_beam_search_batched_equals_one_by_one(beam):
    transformer = pytest.importorskip("transformer_mt.models.transformer")
    torch.manual_seed(0)
    cfg = transformer.TransformerConfig(
        d_model=32, ffn_dim=64, heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0, max_positions=64
    )
    model = transformer.Transformer(cfg, vocab_size=20, pad_id=PAD).eval()
    sources = [[4, 5, 6, 7, 8, 9], [10], [11, 12, 13], [14, 15, 16, 17, 18, 19, 4, 5]]
    dcfg = config(beam=beam, nbest=min(beam, 2), lenpen=0.6, max_len_a=1.0, max_len_b=5)
    together = generate([model], batch(*sources), dcfg, **IDS)
    for src, hyps in zip(sources, together, strict=True):
        alone = generate([model], batch(src), dcfg, **IDS)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)
