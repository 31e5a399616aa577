"""Eole 0.6.4: its Transformer built as its trainer builds it, from a TrainConfig, and one step.

`get_model_class(config.model).for_training(...)` builds the model, `Optimizer.from_config` the
optimiser (Adam; Eole's mixed precision path with autocast and a GradScaler when compute_dtype is
16-bit) and `LossCompute.from_config` the loss (cross-entropy with label smoothing). The step is
`Trainer._process_accumulated_batches` for one batch, inlined: zero_grad, forward and loss under
Eole's autocast, `optim.backward(loss / tokens)`, `optim.step()`. Eole only builds pre-norm
Transformers; sizes, sinusoidal positions, shared embeddings and biases follow our preset.
The TrainConfig insists on data files, so tiny ones are written to a temporary folder; the batch
itself is the harness's synthetic one. Eole's special ids are unk 0, pad 1, bos 2, eos 3.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import harness
import torch

warnings.filterwarnings("ignore")

UNK, PAD, BOS, EOS = 0, 1, 2, 3


def train_config(args: dict[str, Any], folder: str):
    from eole.config.data import Dataset
    from eole.config.models import TransformerModelConfig
    from eole.config.run import TrainConfig

    for name in ("src.txt", "tgt.txt"):
        with open(os.path.join(folder, name), "w") as f:
            f.write("w1 w2\n")
    d = args["d_model"]
    model = TransformerModelConfig(
        layers=args["encoder_layers"],
        hidden_size=d,
        heads=args["heads"],
        transformer_ff=args["ffn_dim"],
        embeddings={"word_vec_size": d, "position_encoding_type": "SinusoidalInterleaved"},
        share_embeddings=True,
        share_decoder_embeddings=True,
        add_qkvbias=True,
        add_final_linear_bias=True,
        add_ffnbias=True,
        generator_bias=False,
        mlp_activation_fn="relu",
        decoder={"layers": args["decoder_layers"]},
    )
    precision = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[args["precision"]]
    training = {
        "dropout": [args["dropout"]],
        "attention_dropout": [0.0],
        "label_smoothing": args["label_smoothing"],
        "optim": "adam",
        "adam_beta1": 0.9,
        "adam_beta2": 0.98,
        "learning_rate": 1e-4,
        "decay_method": "none",
        "compute_dtype": precision,
        "self_attn_backend": "pytorch",
        "normalization": "tokens",
    }
    if args["device"] == "cuda":
        training.update(gpu_ranks=[0], world_size=1)
    return TrainConfig(
        data={
            "synthetic": Dataset(
                path_src=os.path.join(folder, "src.txt"), path_tgt=os.path.join(folder, "tgt.txt")
            )
        },
        src_vocab=os.path.join(folder, "vocab.txt"),
        share_vocab=True,
        save_data=os.path.join(folder, "data"),
        model=model,
        training=training,
    )


def measure(args: dict[str, Any]) -> dict[str, Any]:
    import eole
    import pyonmttok
    from eole.constants import DefaultTokens
    from eole.models.model import get_model_class
    from eole.utils.loss import LossCompute
    from eole.utils.misc import get_autocast
    from eole.utils.optimizers import Optimizer

    device = harness.setup(args)
    vocab = pyonmttok.build_vocab_from_tokens(
        [f"w{i}" for i in range(args["vocab_size"] - 4)],
        special_tokens=[DefaultTokens.UNK, DefaultTokens.PAD, DefaultTokens.BOS, DefaultTokens.EOS],
    )
    assert (
        len(vocab) == args["vocab_size"]
        and vocab[DefaultTokens.PAD] == PAD
        and vocab[DefaultTokens.EOS] == EOS
    )
    vocabs = {
        "src": vocab,
        "tgt": vocab,
        "specials": {
            "bos_token": DefaultTokens.BOS,
            "pad_token": DefaultTokens.PAD,
            "eos_token": DefaultTokens.EOS,
            "unk_token": DefaultTokens.UNK,
        },
        "decoder_start_token": DefaultTokens.BOS,
    }
    with tempfile.TemporaryDirectory() as folder:
        config = train_config(args, folder)
    device_id = 0 if args["device"] == "cuda" else -1
    model = get_model_class(config.model).for_training(
        config.model, vocabs, config.training, device_id=device_id
    )
    model.to(device)
    optim = Optimizer.from_config(model, config, metadata=None)
    train_loss = LossCompute.from_config(config, model, vocabs)

    data = harness.synthetic_batch(args, device, bos=BOS, eos=EOS)
    tgt = torch.cat([data["prev"][:, :1], data["target"]], dim=1)  # BOS + words + EOS; forward drops the last
    b = args["batch_size"]
    batch = {
        "src": data["src"],
        "srclen": torch.full((b,), args["src_len"], device=device),
        "tgt": tgt,
        "images": None,
        "prefix_len": None,
        "cid": ["synthetic"] * b,
        "cid_line_number": list(range(b)),
    }
    normalization = int(data["target"].ne(PAD).sum())

    def step() -> None:
        model.train()
        optim.zero_grad(set_to_none=True)
        with get_autocast(enabled=optim.amp):
            model_out, attns, estim = model(batch["src"], batch["tgt"], batch["srclen"], with_align=False)
            loss, _, _ = train_loss(batch, model_out, attns, estim=estim)
        optim.backward(loss / normalization)
        optim.step()

    seconds = harness.time_steps(step, args, device)
    return {"step_seconds": seconds, "params": harness.count_parameters(model), "version": eole.__version__}


if __name__ == "__main__":
    harness.run_script(measure)
