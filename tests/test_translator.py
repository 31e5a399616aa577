"""The translator: raw lines in, one result per line out, in order (transformer_mt/decoding/translator.py).

`CopyModel` is a real `EncoderDecoder` that puts most of its probability on copying the source, so a
translation's text should be its input line (as sentencepiece normalises it).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import Tensor, nn

from tests.helpers import run_cli
from transformer_mt.checkpoint import FORMAT, save_checkpoint
from transformer_mt.data.vocab import EOS_ID, PAD_ID, Vocabulary, train_vocabulary
from transformer_mt.decoding.scoring import corpus_scores
from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.decoding.translator import Translation, Translator, format_nbest
from transformer_mt.models import build_model
from transformer_mt.models.interface import EncoderDecoder, EncoderOutput

WORDS = "the cat sat on a mat and dog ran to house big small red green blue tree under over".split()


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Vocabulary:
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(300)]
    return train_vocabulary(lines, tmp_path_factory.mktemp("spm") / "spm", vocab_size=80, num_threads=1)


class CopyModel(EncoderDecoder):
    """Predicts source token p at position p (the source's EOS ends the output); no cache needed."""

    def __init__(self, vocab_size: int, max_positions: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self._max_positions, self.pad_id = vocab_size, max_positions, PAD_ID
        self.calls = 0

    @property
    def max_positions(self) -> int | None:
        return self._max_positions

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        self.calls += 1
        return EncoderOutput(torch.zeros(*src_tokens.shape, 1), src_tokens.eq(PAD_ID), {"src": src_tokens})

    def decode(self, prev_tokens, memory, state):
        src = memory.extras["src"]  # (batch, src_len)
        start = 0 if state is None else state.steps
        positions = torch.arange(start, start + prev_tokens.size(1)).expand(src.size(0), -1)  # (batch, len)
        target = src.gather(1, positions.clamp(max=src.size(1) - 1))
        target = target.masked_fill(positions.ge(src.size(1)) | target.eq(PAD_ID), EOS_ID)
        logits = nn.functional.one_hot(target, self.vocab_size).float() * 6.0  # (batch, len, vocab)
        if state is None:
            return logits, None
        state.steps += prev_tokens.size(1)
        return logits, state


class Bigram(EncoderDecoder):
    """A small random network: next token from the newest token and the mean of the source."""

    def __init__(self, vocab_size: int, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pad_id = PAD_ID
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(2 * dim, vocab_size)

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        return EncoderOutput(self.embed(src_tokens), src_tokens.eq(PAD_ID))

    def decode(self, prev_tokens, memory, state):
        keep = (~memory.padding_mask).unsqueeze(2).float()
        context = (memory.states * keep).sum(1) / keep.sum(1)  # (batch, dim)
        context = context.unsqueeze(1).expand(-1, prev_tokens.size(1), -1)
        logits = self.out(torch.cat([self.embed(prev_tokens), context], dim=2))  # (batch, len, vocab)
        return logits, state


def translator(vocab: Vocabulary, model: EncoderDecoder | None = None, **cfg) -> Translator:
    cfg = {"beam": 2, "lenpen": 0.6, **cfg}
    return Translator([model or CopyModel(len(vocab))], vocab, DecodingConfig(**cfg))


def texts(results: list[list[Translation]]) -> list[str]:
    return [hyps[0].text for hyps in results]


def test_one_translation_per_line_in_order_empty_lines_included(vocab):
    lines = ["the cat sat on a mat", "", "dog", "   ", "\t", "a big red house under the green tree", "cat"]
    model = CopyModel(len(vocab))
    results = translator(vocab, model).translate(lines)
    assert len(results) == len(lines)
    assert texts(results) == [line.strip() for line in lines]
    for i in (1, 3, 4):
        assert results[i] == [Translation(tokens=[], score=0.0, logprob=0.0, positional_scores=[], text="")]
    assert translator(vocab, model).translate([]) == []
    calls = model.calls
    translator(vocab, model).translate(["", " "])
    assert model.calls == calls  # no model call for empty lines


def test_batching_does_not_change_translations(vocab):
    rng = random.Random(1)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(25)]
    for model in (CopyModel(len(vocab)), Bigram(len(vocab))):
        one_batch = translator(vocab, model, batch_tokens=100_000, nbest=2).translate(lines)
        for batch_tokens in (1, 17, 64):
            small = translator(vocab, model, batch_tokens=batch_tokens, nbest=2).translate(lines)
            assert [[h.tokens for h in r] for r in small] == [[h.tokens for h in r] for r in one_batch]
        alone = [translator(vocab, model, nbest=2).translate([line])[0] for line in lines[:5]]
        assert [[h.tokens for h in r] for r in alone] == [[h.tokens for h in r] for r in one_batch[:5]]
    assert texts(translator(vocab, CopyModel(len(vocab)), batch_tokens=17).translate(lines)) == lines


def test_long_line_is_truncated_with_a_warning_naming_it(vocab):
    long_line = " ".join(WORDS * 3)
    messages: list[str] = []
    model = CopyModel(len(vocab), max_positions=12)
    cfg = DecodingConfig(beam=2)
    results = Translator([model], vocab, cfg, warn=messages.append).translate(["cat", long_line, "dog"])
    assert len(results) == 3 and texts(results)[0::2] == ["cat", "dog"]
    assert len(results[1][0].tokens) == 11  # 11 source tokens + EOS fill the 12 positions
    assert results[1][0].tokens == vocab.encode(long_line)[:11]
    assert len(messages) == 1 and "line 2" in messages[0] and "max_positions=12" in messages[0]
    with pytest.warns(UserWarning, match="line 1"):
        Translator([model], vocab, cfg).translate([long_line])


def test_hostile_input_does_not_crash(vocab):
    junk = bytes(random.Random(2).randrange(256) for _ in range(3000)).decode("utf-8", errors="replace")
    lines = [
        junk,
        "cat " * 25_000,  # 100k characters
        "\u05e9\u05dc\u05d5\u05dd \u0627\u0644\u0633\u0644\u0627\u0645",  # Hebrew and Arabic (RTL)
        "e\u0301\u0302\u0303 a\u20dd \U0001f600\U0001f44d\U0001f3fd \u200b\u200d",  # combining, emoji, ZW
        "\x00\x01\x7f\u2028\u2029\ufeff",  # control characters and Unicode line breaks
        "\ud800 lone surrogate",  # not encodable as UTF-8
    ]
    model = CopyModel(len(vocab), max_positions=64)
    results = Translator([model], vocab, DecodingConfig(beam=2), warn=lambda m: None).translate(lines)
    assert len(results) == len(lines)
    assert all(len(r) == 1 and isinstance(r[0].text, str) for r in results)
    for i, hyps in enumerate(results):
        assert "\n" not in format_nbest(i, hyps)


def test_format_nbest_writes_index_rank_score_text(vocab):
    results = translator(vocab, beam=3, nbest=3).translate(["the dog ran"])
    rows = [row.split("\t") for row in format_nbest(7, results[0]).split("\n")]
    assert len(rows) == 3 and all(len(row) == 4 for row in rows)
    assert [row[:2] for row in rows] == [["7", "1"], ["7", "2"], ["7", "3"]]
    assert rows[0][3] == "the dog ran"
    scores = [float(row[2]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    odd = Translation(
        tokens=[4], score=-1.23456, logprob=-2.0, positional_scores=[-1.0, -1.0], text="a\tb\nc"
    )
    assert format_nbest(0, [odd]) == "0\t1\t-1.2346\ta b c"
    assert format_nbest(3, []) == ""


def test_autocast_bf16_translates(vocab):
    lines = ["the cat", "", "a small blue tree"]
    model = Bigram(len(vocab))
    results = Translator([model], vocab, DecodingConfig(beam=2, max_len_b=5), precision="bf16").translate(
        lines
    )
    assert len(results) == 3 and all(len(r) == 1 for r in results)
    assert all(isinstance(h.score, float) and h.score == h.score for r in results for h in r)


def _checkpoint_with_decoding(vocab: Vocabulary, path, decoding: dict) -> None:
    """A real checkpoint of a tiny Transformer whose run validated with `decoding`."""
    model_config = {"arch": "transformer", "d_model": 16, "ffn_dim": 32, "heads": 2, "encoder_layers": 1,
                    "decoder_layers": 1, "max_positions": 64}
    model = build_model(model_config, vocab_size=len(vocab), pad_id=vocab.pad_id)
    save_checkpoint(
        {
            "format": FORMAT,
            "model": model.state_dict(),
            "model_config": model_config,
            "vocab_size": model.vocab_size,
            "sentencepiece": vocab.to_bytes(),
            "step": 3,
            "config": {"decoding": decoding},
        },
        path,
    )


def test_from_checkpoint_decodes_as_the_run_validated_unless_told_otherwise(vocab, tmp_path):
    path = tmp_path / "checkpoint.pt"
    # `max_tokens` is the decode batch budget's name in checkpoints written before `batch_tokens`.
    _checkpoint_with_decoding(vocab, path, {"beam": 2, "lenpen": 1.3, "max_tokens": 77})
    stored = Translator.from_checkpoint(path, device="cpu")
    assert (stored.cfg.beam, stored.cfg.lenpen, stored.cfg.batch_tokens) == (2, 1.3, 77)
    overridden = Translator.from_checkpoint(path, device="cpu", beam=3)
    assert (overridden.cfg.beam, overridden.cfg.lenpen) == (3, 1.3)
    assert len(overridden.translate(["the cat sat", ""])) == 2
    with pytest.raises(ValueError, match="unknown decoding option"):
        Translator.from_checkpoint(path, device="cpu", beem=3)


def test_evaluate_reports_the_stored_decoding_with_command_line_keys_on_top(vocab, tmp_path):
    path = tmp_path / "checkpoint.pt"
    _checkpoint_with_decoding(vocab, path, {"beam": 2, "lenpen": 1.3})
    (tmp_path / "src.txt").write_text("the cat sat\na dog ran\n")
    (tmp_path / "ref.txt").write_text("the cat sat\na dog ran\n")
    common = [f"checkpoint={path}", f"input={tmp_path}/src.txt", f"reference={tmp_path}/ref.txt", "device=cpu"]
    for extra, expected in (([], (2, 1.3)), (["decoding.beam=1"], (1, 1.3)), (["decoding=default"], (4, 0.6))):
        report = tmp_path / "report.json"
        result = run_cli("evaluate", *common, f"report={report}", *extra)
        assert result.returncode == 0, result.stderr
        decoding = json.loads(report.read_text())["decoding"]
        assert (decoding["beam"], decoding["lenpen"]) == expected, extra


def test_evaluate_tokenized_bleu_reports_the_papers_protocol_beside_sacrebleu(vocab, tmp_path):
    path = tmp_path / "checkpoint.pt"
    _checkpoint_with_decoding(vocab, path, {"beam": 1, "max_len_b": 5})
    (tmp_path / "src.txt").write_text("the cat sat on a mat\na dog ran to the house\n")
    (tmp_path / "ref.de").write_text("the big-red cat sat\na dog ran\n")
    report, hypotheses = tmp_path / "report.json", tmp_path / "hyp.txt"
    common = [f"checkpoint={path}", f"input={tmp_path}/src.txt", "device=cpu", "tokenized_bleu=true"]
    result = run_cli("evaluate", *common, f"reference={tmp_path}/ref.de", f"report={report}", f"output={hypotheses}")
    assert result.returncode == 0, result.stderr
    scores = json.loads(report.read_text())["scores"]
    expected = corpus_scores(
        hypotheses.read_text().splitlines(), ["the big-red cat sat", "a dog ran"], tokenized_bleu=True, target_lang="de"
    )
    assert scores["bleu_tokenized_compound_split"] == expected["bleu_tokenized_compound_split"]
    assert "moses-de" in scores["bleu_tokenized_compound_split_signature"]
    assert "the paper's protocol" in result.stdout and scores["bleu_signature"] in result.stdout
    assert "sacreBLEU chrF" in result.stdout

    (tmp_path / "ref.txt").write_text("the cat sat\na dog ran\n")
    unnamed = run_cli("evaluate", *common, f"reference={tmp_path}/ref.txt")
    assert unnamed.returncode == 2 and "target_lang=de" in unnamed.stderr
    named = run_cli("evaluate", *common, f"reference={tmp_path}/ref.txt", "target_lang=de")
    assert named.returncode == 0 and "moses-de" in named.stdout, named.stderr
