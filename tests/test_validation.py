"""Validation during training (transformer_mt/training/validation.py): loss and BLEU on the valid split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import write_small_corpus

from transformer_mt.data.prepare import DataConfig, prepare_data
from transformer_mt.decoding.scoring import corpus_scores
from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.decoding.translator import Translator
from transformer_mt.models.transformer import Transformer, TransformerConfig
from transformer_mt.runtime import init_runtime
from transformer_mt.training.validation import validate, validation_loss


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    corpus = write_small_corpus(root / "corpus", train_size=200)
    cfg = DataConfig(
        source="files", train=f"{corpus}/train", valid=f"{corpus}/valid", test=f"{corpus}/test", vocab_size=120
    )
    data = prepare_data(cfg, root / "run", log=lambda _: None)
    torch.manual_seed(0)
    model_cfg = TransformerConfig(d_model=32, ffn_dim=64, heads=2, encoder_layers=1, decoder_layers=1)
    model = Transformer(model_cfg, vocab_size=len(data.vocab), pad_id=data.vocab.pad_id)
    return init_runtime(device="cpu", precision="fp32"), data, model


def test_validation_loss_is_the_per_token_mean_over_every_valid_pair_in_bits(setup):
    runtime, data, model = setup
    valid = data.dataset("valid")
    batches = [[0, 1, 2], list(range(3, len(valid)))]  # any cut into batches gives the same mean
    scores = validation_loss(runtime, model, valid, batches, label_smoothing=0.0)

    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(len(valid)):  # one pair at a time, no padding
            batch = valid.batch([i])
            logits = model(batch.src_tokens, batch.prev_tokens)
            total += F.cross_entropy(logits[0], batch.target[0], reduction="sum").item()
            tokens += batch.ntokens
    assert scores["nll"] == pytest.approx(total / tokens / math.log(2), rel=1e-5)
    assert scores["loss"] == pytest.approx(scores["nll"], rel=1e-6)  # no smoothing: loss is the nll
    assert scores["ppl"] == pytest.approx(2 ** scores["nll"])

    smoothed = validation_loss(runtime, model, valid, batches, label_smoothing=0.1)
    # Smoothing changes the loss (towards uniform: lower for this untrained model), never the nll.
    assert smoothed["nll"] == pytest.approx(scores["nll"]) and smoothed["loss"] != pytest.approx(smoothed["nll"])


def test_validate_picks_bleu_when_asked_and_the_negated_loss_otherwise(setup):
    runtime, data, model = setup
    valid = data.dataset("valid")
    pairs, batches = valid.subset(range(len(valid))), [list(range(len(valid)))]
    decoding = DecodingConfig(beam=2, max_len_b=5)

    scores, metric = validate(
        runtime, model, data, pairs, batches, label_smoothing=0.1, decoding_cfg=decoding, bleu_sentences=None
    )
    assert "bleu" not in scores and metric == -scores["loss"]
    assert scores["loss_seconds"] > 0 and "bleu_seconds" not in scores

    scores, metric = validate(
        runtime, model, data, pairs, batches, label_smoothing=0.1, decoding_cfg=decoding, bleu_sentences=7
    )
    assert scores["bleu_seconds"] > 0
    src, ref = data.text_paths("valid")
    sources = src.read_text(encoding="utf-8").splitlines()[:7]
    references = ref.read_text(encoding="utf-8").splitlines()[:7]
    hypotheses = [hyps[0].text for hyps in Translator([model], data.vocab, decoding).translate(sources)]
    assert metric == scores["bleu"] == pytest.approx(corpus_scores(hypotheses, references)["bleu"])
