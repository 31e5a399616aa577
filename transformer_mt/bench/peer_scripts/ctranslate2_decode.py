"""CTranslate2: the random MarianMT model of `marian.py`, converted by CTranslate2's own
Transformers converter, decoding the same batch greedily and with beam search.

The converter reads the model saved with `save_pretrained`; its tokenizer is only asked for the
vocabulary and the names of EOS and UNK, so a stand-in answers those (a random model has no
sentencepiece files). min_decoding_length = max_decoding_length = out_len makes every sentence run
the decoder out_len times. One translation thread (inter_threads=1) using `threads` cores.
"""

from __future__ import annotations

import tempfile
from typing import Any

import harness
import marian


class VocabularyOnly:
    """What CTranslate2's Marian loader asks of a tokenizer."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.eos_token, self.unk_token = names, "</s>", "<unk>"

    def get_vocab(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def measure(args: dict[str, Any]) -> dict[str, Any]:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    names = marian.token_names(args)

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return VocabularyOnly(names)

    device = harness.setup(args)
    model = marian.marian_model(args)
    src = marian.random_sources(args)
    batch = [[names[i] for i in row] for row in src.tolist()]
    compute_type = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args["precision"]]
    result: dict[str, Any] = {"seconds": {}, "lengths": {}, "params": harness.count_parameters(model)}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(f"{folder}/hf")
        Converter(f"{folder}/hf").convert(f"{folder}/ct2")
        translator = ctranslate2.Translator(
            f"{folder}/ct2",
            device=args["device"],
            compute_type=compute_type,
            inter_threads=1,
            intra_threads=args["threads"],
        )
        result["compute_type"] = translator.compute_type
        for beam in args["beams"]:
            out: list = []

            def run_batch(beam: int = beam, out: list = out) -> None:
                out[:] = translator.translate_batch(
                    batch,
                    beam_size=beam,
                    max_batch_size=args["batch_size"],
                    length_penalty=0.6 if beam > 1 else 1.0,
                    min_decoding_length=args["out_len"],
                    max_decoding_length=args["out_len"],
                )

            timing = {**args, "steps": args["repeats"]}
            result["seconds"][str(beam)] = harness.time_steps(run_batch, timing, device)
            result["lengths"][str(beam)] = sorted({len(r.hypotheses[0]) for r in out})
    result["version"] = ctranslate2.__version__
    return result


if __name__ == "__main__":
    harness.run_script(measure)
