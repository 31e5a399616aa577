"""Hugging Face transformers: `generate` on a random MarianMT model of our preset's size, or, given
`model_dir`, on our own model as `transformer-mt export format=huggingface` wrote it (our ids, pad 0;
its generation config forbids PAD and BOS, as our search does).

Greedy (num_beams=1) and beam search over the harness's batches, with min_new_tokens =
max_new_tokens = the batch's decoder steps, so that every sentence runs the decoder that many times
whatever the random weights prefer (EOS is masked until then), with the KV cache. Precision other than fp32 runs under torch.autocast, as ours does.
"""

from __future__ import annotations

from typing import Any

import harness
import marian
import torch


def measure(args: dict[str, Any]) -> dict[str, Any]:
    import transformers

    device = harness.setup(args)
    if args.get("model_dir"):
        model = transformers.MarianMTModel.from_pretrained(args["model_dir"]).eval().to(device)
        batches = [
            (torch.tensor(rows), torch.tensor(rows).ne(0).long(), steps)
            for rows, steps in zip(args["batches"], args["steps"], strict=True)
        ]
    else:
        model = marian.marian_model(args).to(device)
        batches = marian.batches(args)
    work = [(src.to(device), mask.to(device), steps) for src, mask, steps in batches]
    result: dict[str, Any] = {"seconds": {}, "output_tokens": {}, "params": harness.count_parameters(model)}
    for beam in args["beams"]:
        ran: list[int] = []

        def decode(index: int, beam: int = beam, ran: list = ran) -> None:
            src, mask, steps = work[index]
            with torch.inference_mode(), harness.autocast(device, args["precision"]):
                out = model.generate(
                    input_ids=src,
                    attention_mask=mask,
                    num_beams=beam,
                    do_sample=False,
                    **({"length_penalty": 0.6} if beam > 1 else {}),
                    min_new_tokens=steps,
                    max_new_tokens=steps,
                    use_cache=True,
                )
            ran.append(src.size(0) * (out.size(1) - 1))  # without the decoder start token

        def one_pass(ran: list = ran, decode=decode) -> None:
            ran.clear()
            for index in range(len(work)):
                decode(index)

        for _ in range(args["warmup"]):
            decode(0)
        timing = {**args, "warmup": 0, "steps": args["repeats"]}
        result["seconds"][str(beam)] = harness.time_steps(one_pass, timing, device)
        result["output_tokens"][str(beam)] = sum(ran)
    result["version"] = transformers.__version__
    return result


if __name__ == "__main__":
    harness.run_script(measure)
