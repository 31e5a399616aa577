"""sacreBLEU BLEU and chrF, and the paper's tokenized BLEU (transformer_mt/decoding/scoring.py)."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from transformer_mt.decoding.scoring import corpus_scores, format_scores, paper_tokenize, split_compounds

REFERENCES = [
    "Die Katze sitzt auf der Matte.",
    "Das ist ein gut-gemeinter Vorschlag, sagte er.",
    "Wir fahren morgen nach Berlin.",
]
HYPOTHESES = [
    "Die Katze saß auf der Matte.",
    "Das ist ein gut-gemeinter Plan, sagte er.",
    "Morgen fahren wir nach Berlin.",
]


def test_perfect_match_scores_100():
    scores = corpus_scores(REFERENCES, REFERENCES, tokenized_bleu=True)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["bleu_tokenized_compound_split"] == pytest.approx(100.0)
    assert scores["lines"] == 3


def test_mismatch_equals_sacrebleu_directly():
    scores = corpus_scores(HYPOTHESES, REFERENCES)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
    assert 0.0 < scores["bleu"] < 100.0
    assert "bleu_tokenized_compound_split" not in scores


def test_signatures_are_present_and_scores_json_ready():
    scores = corpus_scores(HYPOTHESES, REFERENCES, tokenized_bleu=True, target_lang="de")
    assert "tok:13a" in scores["bleu_signature"] and "version:" in scores["bleu_signature"]
    assert "nc:6" in scores["chrf_signature"]
    assert "tok:none" in scores["bleu_tokenized_compound_split_signature"]
    assert "compound-split" in scores["bleu_tokenized_compound_split_signature"]
    assert json.loads(json.dumps(scores)) == scores


def test_target_language_picks_sacrebleu_tokenizer():
    scores = corpus_scores(["我喜欢猫"], ["我喜欢狗"], target_lang="zh")
    assert "tok:zh" in scores["bleu_signature"]


def test_compound_splitting_follows_tensor2tensor():
    assert split_compounds("ein gut-gemeinter Rat") == "ein gut ##AT##-##AT## gemeinter Rat"
    assert split_compounds("a-b-c") == "a ##AT##-##AT## b-c"  # non-overlapping, as Perl's s///g
    assert split_compounds("- a - b -") == "- a - b -"  # only hyphens between two non-spaces
    assert (
        paper_tokenize('Das "gut-gemeinte", 3-4 Mal.') == 'Das " gut ##AT##-##AT## gemeinte " , 3 - 4 Mal .'
    )


def test_tokenized_bleu_is_bleu_over_split_tokens():
    scores = corpus_scores(HYPOTHESES, REFERENCES, tokenized_bleu=True)
    expected = sacrebleu.corpus_bleu(
        [paper_tokenize(h) for h in HYPOTHESES], [[paper_tokenize(r) for r in REFERENCES]], tokenize="none"
    ).score
    assert scores["bleu_tokenized_compound_split"] == pytest.approx(expected)
    # the shared compound counts as three matching tokens, so the paper's number is higher here
    assert scores["bleu_tokenized_compound_split"] > scores["bleu"]


def test_line_count_mismatch_names_both_counts():
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        corpus_scores(HYPOTHESES, REFERENCES[:2])
    with pytest.raises(ValueError, match="nothing to score"):
        corpus_scores([], [])


def test_format_scores_labels_each_score_with_its_signature():
    scores = corpus_scores(HYPOTHESES, REFERENCES, tokenized_bleu=True)
    text = format_scores(scores)
    assert f"BLEU = {scores['bleu']:.2f}" in text
    assert scores["bleu_signature"] in text and scores["chrf_signature"] in text
    assert f"chrF = {scores['chrf']:.2f}" in text
    assert "tokenized BLEU with compound splitting" in text
    assert "compound splitting" not in format_scores(corpus_scores(HYPOTHESES, REFERENCES))
