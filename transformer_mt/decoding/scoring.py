"""Corpus BLEU and chrF with sacreBLEU, and the paper's tokenized BLEU (paper section 6.1, Table 2).

sacreBLEU scores detokenized text with its own tokenizer and prints a signature saying exactly how,
so its numbers are comparable across papers; that is the number to report.

The paper's BLEU (28.4 on newstest2014 English-German) was computed the tensor2tensor way
(`get_ende_bleu.sh`), which fairseq's numbers follow too:

1. Moses `tokenizer.perl -l de` on the hypotheses and the references (with its default escaping of
   `&`, `'`, `"`, `<`, `>`, `|`, `[`, `]` as XML entities), here sacremoses' port of that script;
2. hyphenated compounds split, `perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'` ("a-b" becomes
   "a ##AT##-##AT## b", which turns one token into three and raises the score);
3. `multi-bleu.perl` on those tokens: corpus BLEU over whitespace tokens, no smoothing, case kept,
   the brevity penalty against the reference length.

`tokenized_bleu=True` adds that number (sacreBLEU with tokenize="none" and no smoothing computes
multi-bleu's figure on tokenized text) under its own key, `bleu_tokenized_compound_split`, with a
signature naming each step. It needs sacremoses (`pip install 'transformer-mt[moses]'`). It is not
comparable with sacreBLEU's BLEU, nor across tokenizers: say which one a figure is.
"""

from __future__ import annotations

import re
from importlib.metadata import version

from sacrebleu.metrics import BLEU, CHRF

_COMPOUND = re.compile(r"(\S)-(\S)")
PAPER_PROTOCOL = (
    "the paper's protocol (tensor2tensor get_ende_bleu.sh): Moses tokenizer.perl -l {lang}, "
    "compound splitting ##AT##-##AT##, multi-bleu.perl"
)


def split_compounds(line: str) -> str:
    """tensor2tensor's `perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'`, matches not overlapping.

    As with the Perl original, in "a-b-c" only the first hyphen is split: the "b" was consumed by
    the first match.
    """
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def moses_tokenizer(lang: str):
    """sacremoses' MosesTokenizer for `lang` (the optional extra `moses`)."""
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        raise ValueError(
            "tokenized_bleu=true needs the Moses tokenizer (sacremoses): pip install 'transformer-mt[moses]'"
        ) from None
    return MosesTokenizer(lang=lang)


def paper_tokenize(line: str, tokenizer=None, *, lang: str = "en") -> str:
    """A detokenized line as the paper's BLEU saw it: Moses-tokenized as tokenizer.perl -l `lang`
    does by default (escaping included, no aggressive hyphen splitting), then compounds split."""
    tokenizer = tokenizer or moses_tokenizer(lang)
    return split_compounds(tokenizer.tokenize(line, return_str=True, escape=True))


def corpus_scores(
    hypotheses: list[str],
    references: list[str],
    *,
    tokenized_bleu: bool = False,
    target_lang: str | None = None,
) -> dict:
    """sacreBLEU BLEU and chrF of detokenized hypotheses against one reference each.

    Returns plain values (JSON-ready): `bleu`, `bleu_signature`, `bleu_details`, `chrf`,
    `chrf_signature`, `lines`, and with `tokenized_bleu` also `bleu_tokenized_compound_split`, its
    `bleu_tokenized_compound_split_signature` and `bleu_tokenized_protocol` (what it is, in words).
    `target_lang` (e.g. "de", "zh", "ja") lets sacreBLEU pick the tokenizer that language needs, and
    is the Moses tokenizer's language (tokenizer.perl's default, "en", without it).
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
        lang = target_lang or "en"
        tokenizer = moses_tokenizer(lang)
        # multi-bleu.perl: whitespace tokens as they are, no smoothing (a zero n-gram count gives 0)
        multi_bleu = BLEU(tokenize="none", smooth_method="none", force=True)
        score = multi_bleu.corpus_score(
            [paper_tokenize(h, tokenizer) for h in hypotheses],
            [[paper_tokenize(r, tokenizer) for r in references]],
        )
        scores["bleu_tokenized_compound_split"] = score.score
        scores["bleu_tokenized_compound_split_signature"] = (
            f"{multi_bleu.get_signature()}|pre-tokenized:moses-{lang}+escape(sacremoses "
            f"{version('sacremoses')})+compound-split(##AT##)"
        )
        scores["bleu_tokenized_protocol"] = PAPER_PROTOCOL.format(lang=lang)
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
            f"tokenized BLEU with compound splitting = {scores['bleu_tokenized_compound_split']:.2f}, "
            f"{scores['bleu_tokenized_protocol']}; not comparable with sacreBLEU",
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


__all__ = ["corpus_scores", "format_scores", "moses_tokenizer", "paper_tokenize", "split_compounds"]
