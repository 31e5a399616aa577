"""Export a trained checkpoint for other inference engines: CTranslate2 and Hugging Face MarianMT.

    transformer-mt export checkpoint=PATH format=ctranslate2|huggingface output=DIR

Both formats keep our ids (pad 0, unk 1, bos 2, eos 3, then the sentencepiece pieces in order), so
an exported model reads and writes the very ids our own search does, and both get the sentencepiece
model for tokenizing. What each engine supports:

| family | ctranslate2 | huggingface |
| --- | --- | --- |
| Transformer, post-norm, sinusoidal positions | yes | yes (MarianMTModel) |
| Transformer, pre-norm or learned positions | yes | no: MarianMT is post-norm with sinusoidal positions |
| Transformer with an attention window | no | no |
| LSTM, ConvS2S | no | no |

The converters need `pip install transformer-mt[export]` (ctranslate2, transformers); they are
imported only here, when an export runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformer_mt.checkpoint import InferenceModel, load_for_inference
from transformer_mt.export.common import ExportError, require
from transformer_mt.export.ctranslate2 import export_ctranslate2
from transformer_mt.export.huggingface import export_huggingface
from transformer_mt.models.transformer import Transformer

FORMATS = ("ctranslate2", "huggingface")
SUPPORT = (
    "export supports Transformer checkpoints only: format=ctranslate2 (post-norm or pre-norm, "
    "sinusoidal or learned positions) and format=huggingface (post-norm with sinusoidal positions, "
    "as MarianMT)"
)
INFO_FILE = "transformer_mt_export.json"  # what was exported, and how the run decoded


def supported_transformer(loaded: InferenceModel, format: str) -> Transformer:
    """The checkpoint's Transformer, or an ExportError naming what `format` cannot hold."""
    arch = loaded.model_config.get("arch")
    if not isinstance(loaded.model, Transformer):
        raise ExportError(f"{loaded.path} holds a {arch} model; {SUPPORT}")
    cfg = loaded.model.cfg
    if cfg.attention_window is not None:
        raise ExportError(
            f"{loaded.path}: model.attention_window={cfg.attention_window} (restricted self-attention) "
            "has no equivalent in CTranslate2 or MarianMT; only full self-attention exports"
        )
    if format == "huggingface" and (cfg.norm != "post" or cfg.positions != "sinusoidal"):
        raise ExportError(
            f"{loaded.path}: a model with norm={cfg.norm} and positions={cfg.positions} cannot be a "
            "Hugging Face MarianMTModel (post-norm with sinusoidal positions only, and no final layer "
            "norms); export it with format=ctranslate2, which runs pre-norm and learned positions"
        )
    return loaded.model


def export_checkpoint(
    checkpoint: str | Path,
    format: str,
    output: str | Path,
    *,
    quantization: str | None = None,
    force: bool = False,
) -> Path:
    """Write the checkpoint's model in `format` to the folder `output`; the folder's path.

    The folder is written beside its final place and moved there at the end, so a failed export
    leaves nothing half-written; an existing non-empty folder is replaced only with `force`.
    """
    if format not in FORMATS:
        raise ExportError(f"format={format!r} is not one of: {', '.join(FORMATS)}")
    if quantization is not None and format != "ctranslate2":
        raise ExportError(
            f"quantization={quantization} is for format=ctranslate2 (its int8 and float16 weights)"
        )
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise ExportError(f"output={output} exists and is not an empty folder; add force=true to replace it")
    loaded = load_for_inference(checkpoint, "cpu")
    model = supported_transformer(loaded, format)
    pieces = loaded.vocab.id_pieces(range(len(loaded.vocab)))
    spm = loaded.vocab.to_bytes()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if format == "ctranslate2":
            export_ctranslate2(model, pieces, staging, sentencepiece=spm, quantization=quantization)
        else:
            export_huggingface(model, pieces, staging, sentencepiece=spm, decoding=loaded.decoding)
        (staging / INFO_FILE).write_text(json.dumps(_info(loaded, format, quantization), indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _info(loaded: InferenceModel, format: str, quantization: str | None) -> dict[str, Any]:
    return {
        "format": format,
        "quantization": quantization,
        "checkpoint": str(loaded.path),
        "step": loaded.step,
        "model_config": loaded.model_config,
        "decoding": loaded.decoding,
        "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
        "sentencepiece": "sentencepiece.model",
    }


__all__ = ["FORMATS", "ExportError", "export_checkpoint", "require", "supported_transformer"]
