"""sacreBLEU BLEU and chrF, and the paper's tokenized BLEU (transformer_mt/decoding/scoring.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

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
    assert "smooth:none" in scores["bleu_tokenized_compound_split_signature"]
    assert "moses-de" in scores["bleu_tokenized_compound_split_signature"]
    assert "compound-split" in scores["bleu_tokenized_compound_split_signature"]
    assert "paper's protocol" in scores["bleu_tokenized_protocol"]
    assert json.loads(json.dumps(scores)) == scores


def test_target_language_picks_sacrebleu_tokenizer():
    scores = corpus_scores(["我喜欢猫"], ["我喜欢狗"], target_lang="zh")
    assert "tok:zh" in scores["bleu_signature"]


def test_compound_splitting_follows_tensor2tensor():
    assert split_compounds("ein gut-gemeinter Rat") == "ein gut ##AT##-##AT## gemeinter Rat"
    assert split_compounds("a-b-c") == "a ##AT##-##AT## b-c"  # non-overlapping, as Perl's s///g
    assert split_compounds("- a - b -") == "- a - b -"  # only hyphens between two non-spaces
    assert (
        paper_tokenize('Das "gut-gemeinte", 3-4 Mal.', lang="de")
        == "Das &quot; gut ##AT##-##AT## gemeinte &quot; , 3 ##AT##-##AT## 4 Mal ."
    )


def test_tokenized_bleu_is_bleu_over_split_tokens():
    scores = corpus_scores(HYPOTHESES, REFERENCES, tokenized_bleu=True)
    expected = sacrebleu.corpus_bleu(
        [paper_tokenize(h) for h in HYPOTHESES],
        [[paper_tokenize(r) for r in REFERENCES]],
        tokenize="none",
        smooth_method="none",
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
    assert "tokenized BLEU with compound splitting" in text and "the paper's protocol" in text
    assert scores["bleu_tokenized_compound_split_signature"] in text
    assert "compound splitting" not in format_scores(corpus_scores(HYPOTHESES, REFERENCES))


# The paper's pipeline, step by step, on a fixture with what Moses' tokenizer treats specially:
# quotes, apostrophes, "&", brackets, abbreviations, ordinals, numbers, hyphenated compounds.
PAPER_REFERENCES = [
    'Die E-Mail-Adresse steht im "Impressum", sagte der Sprecher.',
    "Er hat's z.B. am 3. Mai für 1.000 Euro verkauft & zurückgekauft.",
    "Das Gesundheits-Ministerium prüft die Anti-Terror-Gesetze [seit 2012].",
    "Sie liest ein Buch über die Art.",
    "Wir fahren morgen nach Baden-Baden.",
]
PAPER_HYPOTHESES = [
    'Die E-Mail-Adresse ist im "Impressum", sagte ein Sprecher.',
    "Er hat's z.B. am 3. Mai für 1.000 Euro gekauft & verkauft.",
    "Das Gesundheits-Ministerium prüft die Anti-Terror-Gesetze seit 2012.",
    "Sie liest ein Buch über diese Art.",
    "Morgen fahren wir nach Baden-Baden.",
]
# Step 1: `perl tokenizer.perl -l de` (Moses, as of 2017, when the paper was scored; from late 2018
# it also splits the dot of a sentence-final abbreviation, "Art ."): the output of that script.
MOSES_DE_REFERENCES = [
    "Die E-Mail-Adresse steht im &quot; Impressum &quot; , sagte der Sprecher .",
    "Er hat &apos; s z.B. am 3. Mai für 1.000 Euro verkauft &amp; zurückgekauft .",
    "Das Gesundheits-Ministerium prüft die Anti-Terror-Gesetze &#91; seit 2012 &#93; .",
    "Sie liest ein Buch über die Art.",
    "Wir fahren morgen nach Baden-Baden .",
]
MOSES_DE_HYPOTHESES = [
    "Die E-Mail-Adresse ist im &quot; Impressum &quot; , sagte ein Sprecher .",
    "Er hat &apos; s z.B. am 3. Mai für 1.000 Euro gekauft &amp; verkauft .",
    "Das Gesundheits-Ministerium prüft die Anti-Terror-Gesetze seit 2012 .",
    "Sie liest ein Buch über diese Art.",
    "Morgen fahren wir nach Baden-Baden .",
]


def perl_compound_split(line: str) -> str:
    """Step 2, `perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'`, by hand: scan left to right, and
    after a replacement go on after the character that followed the hyphen (Perl's non-overlapping /g)."""
    out, i = [], 0
    while i < len(line):
        if i + 2 < len(line) and line[i + 1] == "-" and not line[i].isspace() and not line[i + 2].isspace():
            out.append(f"{line[i]} ##AT##-##AT## {line[i + 2]}")
            i += 3
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def multi_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Step 3, what multi-bleu.perl computes for one reference: clipped n-gram matches over
    whitespace tokens summed over the corpus, n = 1..4, geometric mean, brevity penalty; no smoothing."""
    correct, total, hyp_len, ref_len = [0] * 5, [0] * 5, 0, 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            h_grams = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            r_grams = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            total[n] += sum(h_grams.values())
            correct[n] += sum(min(c, r_grams[g]) for g, c in h_grams.items())
    if any(correct[n] == 0 for n in range(1, 5)):
        return 0.0
    log_precision = sum(math.log(correct[n] / total[n]) for n in range(1, 5)) / 4
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(log_precision)


def test_tokenized_bleu_reproduces_the_papers_pipeline_step_by_step():
    from sacremoses import MosesTokenizer

    moses = MosesTokenizer(lang="de")
    assert [moses.tokenize(r, return_str=True, escape=True) for r in PAPER_REFERENCES] == MOSES_DE_REFERENCES
    assert [moses.tokenize(h, return_str=True, escape=True) for h in PAPER_HYPOTHESES] == MOSES_DE_HYPOTHESES
    references = [perl_compound_split(line) for line in MOSES_DE_REFERENCES]
    hypotheses = [perl_compound_split(line) for line in MOSES_DE_HYPOTHESES]
    assert references[0] == "Die E ##AT##-##AT## Mail ##AT##-##AT## Adresse steht im &quot; Impressum &quot; , sagte der Sprecher ."
    assert [split_compounds(line) for line in MOSES_DE_REFERENCES] == references
    expected = multi_bleu(hypotheses, references)
    # `perl multi-bleu.perl ref.tok < hyp.tok` on those files printed
    # "BLEU = 67.84, 90.0/72.7/64.0/57.8 (BP=0.967, ratio=0.968, hyp_len=60, ref_len=62)"
    assert round(expected, 2) == 67.84

    scores = corpus_scores(PAPER_HYPOTHESES, PAPER_REFERENCES, tokenized_bleu=True, target_lang="de")
    assert scores["bleu_tokenized_compound_split"] == pytest.approx(expected, abs=1e-9)
    assert scores["bleu_tokenized_compound_split"] != pytest.approx(scores["bleu"])  # not sacreBLEU's 13a


def test_tokenized_bleu_has_no_smoothing_like_multi_bleu():
    # No 4-gram matches: multi-bleu.perl says 0 where sacreBLEU's default (exp smoothing) would not.
    scores = corpus_scores(["a b c d e"], ["a b c x e"], tokenized_bleu=True, target_lang="en")
    assert scores["bleu_tokenized_compound_split"] == 0.0 and scores["bleu"] > 0.0


def test_tokenized_bleu_without_sacremoses_names_the_extra():
    code = (
        "import sys; sys.modules['sacremoses'] = None\n"
        "from transformer_mt.decoding.scoring import corpus_scores\n"
        "try:\n"
        "    corpus_scores(['a'], ['a'], tokenized_bleu=True)\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'transformer-mt[moses]'" in out
