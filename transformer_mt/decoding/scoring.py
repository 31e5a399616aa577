"""Corpus BLEU and chrF with sacreBLEU, and the paper's tokenized BLEU (paper section 6.1, Table 2).

sacreBLEU scores detokenized text with its own tokenizer and prints a signature saying exactly how,
so its numbers are comparable across papers; that is the number to report.

The paper's BLEU (28.4 on newstest2014 English-German) was computed the tensor2tensor way
(`get_ende_bleu.sh`): tokenize both sides, split hyphenated compounds ("a-b" becomes
"a ##AT##-##AT## b", which turns one token into three and raises the score), then BLEU on those
tokens. `tokenized_bleu=True` adds that number for comparison with the paper, under its own key
`bleu_tokenized_compound_split`. It uses sacreBLEU's 13a tokenizer in place of the Moses
tokenizer.perl of the original script, so it approximates the paper's protocol; it is not sacreBLEU.
"""

from __future__ import annotations

import re

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

_COMPOUND = re.compile(r"(\S)-(\S)")


def split_compounds(line: str) -> str:
    """tensor2tensor's `perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'`, matches not overlapping.

    As with the Perl original, in "a-b-c" only the first hyphen is split: the "b" was consumed by
    the first match.
    """
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def paper_tokenize(line: str, tokenizer: Tokenizer13a | None = None) -> str:
    """A detokenized line as the paper's BLEU saw it: 13a-tokenized, then compounds split."""
    return split_compounds((tokenizer or Tokenizer13a())(line))


def corpus_scores(
    hypotheses: list[str],
    references: list[str],
    *,
    tokenized_bleu: bool = False,
    target_lang: str | None = None,
) -> dict:
    """sacreBLEU BLEU and chrF of detokenized hypotheses against one reference each.

    Returns plain values (JSON-ready): `bleu`, `bleu_signature`, `bleu_details`, `chrf`,
    `chrf_signature`, `lines`, and with `tokenized_bleu` also `bleu_tokenized_compound_split` and
    its `bleu_tokenized_compound_split_signature`. `target_lang` (e.g. "de", "zh", "ja") lets
    sacreBLEU pick the tokenizer that language needs.
    """
    _check_lines(hypotheses, references)
    bleu = BLEU(trg_lang=target_lang or "")
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf = CHRF()
    chrf_score = chrf.corpus_score(hypotheses, [references])
    scores: dict = {
        "bleu": bleu_score.score,
        "bleu_signature": str(bleu.get_signature()),
        "bleu_details": str(bleu_score),
        "chrf": chrf_score.score,
        "chrf_signature": str(chrf.get_signature()),
        "lines": len(hypotheses),
    }
    if tokenized_bleu:
        tokenizer = Tokenizer13a()
        paper_bleu = BLEU(tokenize="none", force=True)  # the input is tokenized on purpose
        score = paper_bleu.corpus_score(
            [paper_tokenize(h, tokenizer) for h in hypotheses],
            [[paper_tokenize(r, tokenizer) for r in references]],
        )
        scores["bleu_tokenized_compound_split"] = score.score
        scores["bleu_tokenized_compound_split_signature"] = (
            f"{paper_bleu.get_signature()}|pre-tokenized:13a+compound-split(##AT##)"
        )
    return scores


def format_scores(scores: dict) -> str:
    """The scores of `corpus_scores` for people, each labelled with its signature."""
    lines = [
        f"sacreBLEU {scores['bleu_details']}",
        f"  signature: {scores['bleu_signature']}",
        f"sacreBLEU chrF = {scores['chrf']:.2f}",
        f"  signature: {scores['chrf_signature']}",
    ]
    if "bleu_tokenized_compound_split" in scores:
        lines += [
            "tokenized BLEU with compound splitting (the paper's protocol, not comparable with sacreBLEU) "
            f"= {scores['bleu_tokenized_compound_split']:.2f}",
            f"  signature: {scores['bleu_tokenized_compound_split_signature']}",
        ]
    return "\n".join(lines)


def _check_lines(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: "
            "scoring needs exactly one reference line per hypothesis line"
        )
    if not hypotheses:
        raise ValueError("nothing to score: 0 hypotheses and 0 references")
    for name, lines in (("hypothesis", hypotheses), ("reference", references)):
        for i, line in enumerate(lines):
            if not isinstance(line, str):
                raise TypeError(f"{name} {i + 1} is a {type(line).__name__}, expected a string")


__all__ = ["corpus_scores", "format_scores", "paper_tokenize", "split_compounds"]
