"""The attention maps the page draws: every layer's weights for one sentence and one translation.

Runs on the batcher's worker thread, which owns the model. The weights come from the model's
teacher-forced pass over the translation (`EncoderDecoder.attention`); rows and columns are
labelled with the model's pieces, the final "</s>" included on both sides: the target's is the
position that predicted the end of the sentence, the source's is the EOS the encoder read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from transformer_mt.decoding.translator import Translator, collate_sources
from transformer_mt.runtime import autocast

DECIMALS = 4  # weights are sent rounded: a 60 x 60 map of 8 heads x 6 layers stays under a few MB


def attention_maps(translator: Translator, line: str, tokens: Sequence[int]) -> dict[str, Any]:
    """Pieces of both sides and the weights of every layer, as nested lists
    (layer, head, query, key), from the translator's first model."""
    vocab, model = translator.vocab, translator.models[0]
    source = translator.source_ids(line)
    src = collate_sources([source], pad_id=vocab.pad_id, eos_id=vocab.eos_id).to(translator.device)
    prev = torch.tensor([[vocab.bos_id, *tokens]], dtype=torch.long, device=translator.device)
    with torch.inference_mode(), autocast(translator.device, translator.precision):
        found = model.attention(src, prev)  # the service's models are in eval mode
    return {
        "source": vocab.id_pieces(source) + ["</s>"],
        "target": vocab.id_pieces(tokens) + ["</s>"],
        "text": vocab.decode(tokens),
        "cross": _lists(found.cross),
        "encoder": _lists(found.encoder),
        "decoder": _lists(found.decoder),
    }


def _lists(layers: list[torch.Tensor]) -> list:
    """Per layer (1, heads, queries, keys) -> nested lists (heads, queries, keys), rounded."""
    return [layer[0].double().cpu().mul(10**DECIMALS).round().div(10**DECIMALS).tolist() for layer in layers]


__all__ = ["attention_maps"]
