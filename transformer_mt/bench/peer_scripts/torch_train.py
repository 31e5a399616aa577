"""The reference: a Transformer of the same size built from `torch.nn.Transformer`, trained one step.

What a PyTorch user writes by hand: shared token embeddings scaled by sqrt(d_model), sinusoidal
positions, `nn.Transformer` (batch-first, post- or pre-norm as asked), the output projection tied to
the embeddings, `F.cross_entropy` with label smoothing, and `torch.optim.Adam` (its default foreach
kernel). One difference in size: `nn.Transformer` always closes each stack with a LayerNorm.

Runs in our own process (`measure(args)`) or as a script like the other peers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # imported as transformer_mt.bench.peer_scripts.torch_train
    from . import harness
except ImportError:  # run as a script
    import harness  # type: ignore[no-redef]

PAD, BOS, EOS = 0, 2, 3


class TorchTransformer(nn.Module):
    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__()
        d = args["d_model"]
        self.embed = nn.Embedding(args["vocab_size"], d, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        self.scale = math.sqrt(d)
        position = torch.arange(args["max_positions"])[:, None]
        inv_freq = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        table = torch.zeros(args["max_positions"], d)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * inv_freq), torch.cos(position * inv_freq)
        self.register_buffer("positions", table, persistent=False)
        self.dropout = nn.Dropout(args["dropout"])
        self.transformer = nn.Transformer(
            d_model=d,
            nhead=args["heads"],
            num_encoder_layers=args["encoder_layers"],
            num_decoder_layers=args["decoder_layers"],
            dim_feedforward=args["ffn_dim"],
            dropout=args["dropout"],
            batch_first=True,
            norm_first=args["norm"] == "pre",
        )

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.dropout(self.embed(tokens) * self.scale + self.positions[: tokens.size(1)])

    def forward(self, src: Tensor, prev: Tensor) -> Tensor:
        """(batch, src_len), (batch, tgt_len) -> logits (batch, tgt_len, vocab)."""
        t = prev.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=prev.device).triu(1)  # True: may not attend
        hidden = self.transformer(
            self._embed(src),
            self._embed(prev),
            tgt_mask=causal,
            src_key_padding_mask=src.eq(PAD),
            tgt_key_padding_mask=prev.eq(PAD),
            memory_key_padding_mask=src.eq(PAD),
            tgt_is_causal=True,
        )
        return F.linear(hidden, self.embed.weight)


def measure(args: dict[str, Any]) -> dict[str, Any]:
    device = harness.setup(args)
    model = TorchTransformer(args).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    batch = harness.synthetic_batch(args, device, bos=BOS, eos=EOS)

    def step() -> None:
        with harness.autocast(device, args["precision"]):
            logits = model(batch["src"], batch["prev"])
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            batch["target"].flatten(),
            ignore_index=PAD,
            label_smoothing=args["label_smoothing"],
            reduction="sum",
        )
        (loss / batch["target"].ne(PAD).sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = harness.time_steps(step, args, device)
    return {"step_seconds": seconds, "params": harness.count_parameters(model), "version": torch.__version__}


if __name__ == "__main__":
    harness.run_script(measure)
