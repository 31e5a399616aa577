"""JoeyNMT 2.3.0: its Transformer built by `joeynmt.model.build_model` from a config dict, one step.

The step is JoeyNMT's `TrainManager._train_step` and update, inlined: sort the batch by source length,
forward with `return_type="loss"` under autocast (its `XentLoss` with label smoothing, a KL
divergence against a smoothed one-hot distribution), normalise by tokens, backward, `.item()` of
the loss, Adam step, `zero_grad`. Embeddings are tied (source, target, softmax) as in our presets.
JoeyNMT's default special ids are unk 0, pad 1, bos 2, eos 3; the random words avoid them all.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import harness
import torch
from joeynmt.batch import Batch
from joeynmt.model import build_model
from joeynmt.vocabulary import Vocabulary

UNK, PAD, BOS, EOS = 0, 1, 2, 3


def model_config(args: dict[str, Any]) -> dict[str, Any]:
    def stack(layers: int) -> dict[str, Any]:
        return {
            "type": "transformer",
            "num_layers": layers,
            "num_heads": args["heads"],
            "embeddings": {"embedding_dim": args["d_model"], "scale": True, "dropout": args["dropout"]},
            "hidden_size": args["d_model"],
            "ff_size": args["ffn_dim"],
            "dropout": args["dropout"],
            "layer_norm": args["norm"],
        }

    return {
        "initializer": "xavier_uniform",
        "embed_initializer": "xavier_uniform",
        "bias_initializer": "zeros",
        "tied_embeddings": True,
        "tied_softmax": True,
        "encoder": stack(args["encoder_layers"]),
        "decoder": stack(args["decoder_layers"]),
    }


def measure(args: dict[str, Any]) -> dict[str, Any]:
    device = harness.setup(args)
    specials = SimpleNamespace(
        unk_token="<unk>",
        unk_id=UNK,
        pad_token="<pad>",
        pad_id=PAD,
        bos_token="<s>",
        bos_id=BOS,
        eos_token="</s>",
        eos_id=EOS,
        sep_token=None,
        sep_id=None,
        lang_tags=[],
    )
    vocab = Vocabulary([f"w{i}" for i in range(args["vocab_size"] - 4)], specials)
    assert len(vocab) == args["vocab_size"], len(vocab)
    model = build_model(model_config(args), src_vocab=vocab, trg_vocab=vocab).to(device)
    model.loss_function = ("crossentropy", args["label_smoothing"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

    data = harness.synthetic_batch(args, torch.device("cpu"), bos=BOS, eos=EOS)
    trg = torch.cat([data["prev"][:, :1], data["target"]], dim=1)  # BOS + words + EOS, as its collate makes
    batch = Batch(
        src=data["src"],
        src_length=torch.full((args["batch_size"],), args["src_len"]),
        src_prompt_mask=None,
        trg=trg,
        trg_prompt_mask=None,
        indices=torch.arange(args["batch_size"]),
        device=device,
        pad_index=PAD,
        eos_index=EOS,
    )
    assert torch.equal(batch.trg_input.cpu(), data["prev"]) and torch.equal(batch.trg.cpu(), data["target"])

    def step() -> None:
        model.train()
        batch.sort_by_src_length()
        with harness.autocast(device, args["precision"]):
            batch_loss, _, _, _ = model(return_type="loss", **vars(batch))
        loss = batch.normalize(batch_loss, normalization="tokens")
        loss.backward()
        loss.item()
        optimizer.step()
        model.zero_grad()

    seconds = harness.time_steps(step, args, device)
    import joeynmt

    return {
        "step_seconds": seconds,
        "params": harness.count_parameters(model),
        "version": joeynmt.__version__,
    }


if __name__ == "__main__":
    harness.run_script(measure)
