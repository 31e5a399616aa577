"""End to end, as a user runs it: train on the embedded sample, evaluate with sacreBLEU, translate.

The model is smaller than the quick start's (transformer_tiny at d=64, two layers) so that the test
trains in about two minutes on one core. Measured on 2026-11-25 with torch 2.13.0 on the CPU: test
BLEU 40.2 (chrF 68.2) after these 900 steps; an untrained model scores about 0. The threshold leaves
room for other builds and machines, not for a model that stopped learning.
"""

import json
import re

from tests.helpers import run_cli

E2E_TRAINING = [
    "model=transformer_tiny",
    "model.d_model=64",
    "model.ffn_dim=256",
    "model.heads=4",
    "model.encoder_layers=2",
    "model.decoder_layers=2",
    "model.dropout=0.0",
    "model.norm=pre",
    "data.vocab_size=500",
    "trainer.max_tokens=1024",
    "trainer.max_steps=900",
    "trainer.lr=0.006",
    "trainer.warmup_steps=100",
    "trainer.log_every=100",
    "trainer.valid_every=900",
    "trainer.save_every=900",
    "trainer.valid_bleu_sentences=50",
    "trainer.device=cpu",
]
BLEU_THRESHOLD = 25.0


def test_train_evaluate_translate_the_sample(tmp_path):
    run = tmp_path / "run"
    trained = run_cli("train", f"output_dir={run}", *E2E_TRAINING, timeout=1200)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "training cost" in trained.stderr  # the Table 2 style summary ends every run
    checkpoint = run / "checkpoints" / "checkpoint_best.pt"
    assert checkpoint.is_file()

    report = tmp_path / "report.json"
    evaluated = run_cli("evaluate", f"checkpoint={checkpoint}", f"report={report}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    printed = re.search(r"sacreBLEU BLEU = ([\d.]+)", evaluated.stdout)
    assert printed, evaluated.stdout
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in evaluated.stdout  # the signature
    bleu = float(printed.group(1))
    assert bleu >= BLEU_THRESHOLD, f"test BLEU {bleu} below {BLEU_THRESHOLD}:\n{trained.stderr[-2000:]}"
    saved = json.loads(report.read_text())
    assert saved["lines"] == 500 and abs(saved["scores"]["bleu"] - bleu) < 0.01

    lines = "The old woman sees the small dog.\n\nThe child gives the teacher a book.\n"
    translated = run_cli("translate", f"checkpoint={checkpoint}", stdin=lines)
    assert translated.returncode == 0, translated.stderr[-3000:]
    out = translated.stdout.split("\n")
    assert len(out) == 4 and out[3] == ""  # one line per input line, the empty one kept empty
    assert out[1] == ""
    assert "Frau" in out[0] and "Hund" in out[0], out
