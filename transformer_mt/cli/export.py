"""Write a Transformer checkpoint for another inference engine.

    transformer-mt export checkpoint=PATH format=ctranslate2 output=DIR [quantization=int8]
    transformer-mt export checkpoint=PATH format=huggingface output=DIR

format=ctranslate2 builds a CTranslate2 model with its own spec API (post-norm or pre-norm,
sinusoidal or learned positions); quantization=int8|int8_float16|float16|... stores its weights so.
format=huggingface writes a MarianMTModel folder with its tokenizer (post-norm, sinusoidal positions
only), loadable offline with from_pretrained. Both keep our ids and carry the sentencepiece model.
LSTM and ConvS2S checkpoints cannot be exported. Needs pip install 'transformer-mt[export]'."""

from __future__ import annotations

import sys

from transformer_mt.cli.common import load_config
from transformer_mt.export import FORMATS, ExportError, export_checkpoint

USAGE = {
    "ctranslate2": (
        "import ctranslate2, sentencepiece as spm\n"
        "  sp = spm.SentencePieceProcessor(model_file='{out}/sentencepiece.model')\n"
        "  translator = ctranslate2.Translator('{out}')\n"
        "  result = translator.translate_batch([sp.encode('A man rides a bike.', out_type=str)],\n"
        "      beam_size=4, suppress_sequences=[['<blank>'], ['<s>']])\n"
        "  print(sp.decode(result[0].hypotheses[0]))"
    ),
    "huggingface": (
        "from transformers import AutoTokenizer, MarianMTModel\n"
        "  tokenizer, model = AutoTokenizer.from_pretrained('{out}'), MarianMTModel.from_pretrained('{out}')\n"
        "  output = model.generate(**tokenizer(['A man rides a bike.'], return_tensors='pt'))\n"
        "  print(tokenizer.decode(output[0], skip_special_tokens=True))"
    ),
}


def main(overrides: list[str], show_help: bool) -> None:
    cfg = load_config("export", overrides, show_help, __doc__)
    if cfg is None:
        return
    missing = [key for key in ("checkpoint", "format", "output") if getattr(cfg, key) is None]
    if missing:
        raise ExportError(
            f"give {' '.join(f'{key}=...' for key in missing)} (format is one of {', '.join(FORMATS)})"
        )
    written = export_checkpoint(
        cfg.checkpoint, cfg.format, cfg.output, quantization=cfg.quantization, force=cfg.force
    )
    print(
        f"wrote {cfg.format} model to {written}; use it with:\n  " + USAGE[cfg.format].format(out=written),
        file=sys.stderr,
    )
