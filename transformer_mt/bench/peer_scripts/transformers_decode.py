"""Hugging Face transformers: `generate` on a random MarianMT model of our preset's size.

Greedy (num_beams=1) and beam search, with min_new_tokens = max_new_tokens = out_len so that every
sentence runs the decoder out_len times whatever the random weights prefer (EOS is masked until
then), with the KV cache. Precision other than fp32 runs under torch.autocast, as ours does.
"""

from __future__ import annotations

from typing import Any

import harness
import marian
import torch


def measure(args: dict[str, Any]) -> dict[str, Any]:
    import transformers

    device = harness.setup(args)
    model = marian.marian_model(args).to(device)
    src = marian.random_sources(args).to(device)
    mask = torch.ones_like(src)
    result: dict[str, Any] = {"seconds": {}, "lengths": {}, "params": harness.count_parameters(model)}
    for beam in args["beams"]:
        out: list[torch.Tensor] = []

        def run_batch(beam: int = beam, out: list = out) -> None:
            with torch.inference_mode(), harness.autocast(device, args["precision"]):
                out[:] = [
                    model.generate(
                        input_ids=src,
                        attention_mask=mask,
                        num_beams=beam,
                        do_sample=False,
                        **({"length_penalty": 0.6} if beam > 1 else {}),
                        min_new_tokens=args["out_len"],
                        max_new_tokens=args["out_len"],
                        use_cache=True,
                    )
                ]

        result["seconds"][str(beam)] = harness.time_steps(
            run_batch, {**args, "steps": args["repeats"]}, device
        )
        result["lengths"][str(beam)] = [out[0].size(1) - 1]  # without the decoder start token
    result["version"] = transformers.__version__
    return result


if __name__ == "__main__":
    harness.run_script(measure)
