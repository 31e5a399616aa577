"""CTranslate2: the random MarianMT model of `marian.py`, converted by CTranslate2's own
Transformers converter, decoding the harness's batches greedily and with beam search; or, given
`model_dir`, our own model as `transformer-mt export format=ctranslate2` wrote it.

The converter reads the model saved with `save_pretrained`; its tokenizer is only asked for the
vocabulary and the names of EOS and UNK, so a stand-in answers those (a random model has no
sentencepiece files). Our export keeps our ids: its vocabulary file names them, and CTranslate2
appends the EOS that our batches end with. min_decoding_length = max_decoding_length = the batch's
decoder steps makes every sentence run the decoder that many times. One translation thread
(inter_threads=1) using `threads` cores; precision int8 is compute_type int8.
"""

from __future__ import annotations

import json
import os
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


def our_export(model_dir: str, args: dict[str, Any]) -> list[tuple[list[list[str]], int]]:
    """The harness's batches as tokens of our exported model: our ids without padding and the final
    EOS (CTranslate2 adds it back, as the export's config says)."""
    with open(os.path.join(model_dir, "shared_vocabulary.json")) as f:
        names = json.load(f)
    pad = 0
    return [
        ([[names[i] for i in row if i != pad][:-1] for row in rows], steps)
        for rows, steps in zip(args["batches"], args["steps"], strict=True)
    ]


def measure(args: dict[str, Any]) -> dict[str, Any]:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    device = harness.setup(args)
    compute_types = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}
    compute_type = compute_types[args["precision"]]
    result: dict[str, Any] = {"seconds": {}, "output_tokens": {}}
    options: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.get("model_dir"):
            model_dir, work = args["model_dir"], our_export(args["model_dir"], args)
            options["suppress_sequences"] = [["<blank>"], ["<s>"]]  # PAD and BOS, as our search
        else:
            names = marian.token_names(args)

            class Converter(TransformersConverter):
                def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
                    return VocabularyOnly(names)

            model = marian.marian_model(args)
            result["params"] = harness.count_parameters(model)
            work = [
                ([[names[i] for i in row] for row in marian.marian_ids(args, rows)], steps)
                for rows, steps in zip(args["batches"], args["steps"], strict=True)
            ]
            model.save_pretrained(f"{folder}/hf")
            model_dir = Converter(f"{folder}/hf").convert(f"{folder}/ct2")
        translator = ctranslate2.Translator(
            model_dir,
            device=args["device"],
            compute_type=compute_type,
            inter_threads=1,
            intra_threads=args["threads"],
        )
        result["compute_type"] = translator.compute_type
        for beam in args["beams"]:
            ran: list[int] = []

            def decode(index: int, beam: int = beam, ran: list = ran) -> None:
                batch, steps = work[index]
                out = translator.translate_batch(
                    batch,
                    beam_size=beam,
                    max_batch_size=len(batch),
                    length_penalty=0.6 if beam > 1 else 1.0,
                    min_decoding_length=steps,
                    max_decoding_length=steps,
                    **options,
                )
                ran.append(sum(len(r.hypotheses[0]) for r in out))

            def one_pass(ran: list = ran, decode=decode) -> None:
                ran.clear()
                for index in range(len(work)):
                    decode(index)

            for _ in range(args["warmup"]):
                decode(0)
            timing = {**args, "warmup": 0, "steps": args["repeats"]}
            result["seconds"][str(beam)] = harness.time_steps(one_pass, timing, device)
            result["output_tokens"][str(beam)] = sum(ran)
    result["version"] = ctranslate2.__version__
    return result


if __name__ == "__main__":
    harness.run_script(measure)
