"""The one encoder/decoder interface that every model family implements.

Beam search, the trainer and the CLI only ever talk to `EncoderDecoder`; they never ask which
family they hold. Incremental decoding keeps its cache in a `DecoderState`, and both the encoder's
output and that state can be reordered along the batch dimension, which is all a beam search needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class EncoderOutput:
    """What the decoder attends to. Every tensor is batch-first."""

    states: Tensor  # (batch, src_len, dim)
    padding_mask: Tensor  # (batch, src_len), True at padding
    extras: dict[str, Tensor] = field(default_factory=dict)  # family-specific, batch-first

    def reorder(self, indices: Tensor) -> EncoderOutput:
        """A new output whose batch row i is row `indices[i]` of this one."""
        return EncoderOutput(
            states=self.states.index_select(0, indices),
            padding_mask=self.padding_mask.index_select(0, indices),
            extras={name: t.index_select(0, indices) for name, t in self.extras.items()},
        )


class DecoderState:
    """The cache of incremental decoding: batch-first tensors by name, and the steps decoded so far.

    `cache` holds what each row (hypothesis) computed from its own outputs so far, e.g. the
    self-attention keys and values. `source_cache` holds what a row computed from its encoder
    output alone, e.g. the cross-attention keys and values: the same for rows that decode the same
    source sentence, so beam search need not move it when beams of one sentence swap places.
    """

    def __init__(self) -> None:
        self.cache: dict[str, Tensor] = {}
        self.source_cache: dict[str, Tensor] = {}
        self.steps = 0

    def reorder(self, indices: Tensor, *, same_sources: bool = False) -> None:
        """Keep, in place, batch row `indices[i]` as row i of every cached tensor.

        `same_sources=True` promises that row `indices[i]` decodes the same source sentence as row i
        (beam search choosing among the beams of each sentence): `source_cache` then stays as it is.
        """
        caches = (self.cache,) if same_sources else (self.cache, self.source_cache)
        for cache in caches:
            for name, tensor in cache.items():
                cache[name] = tensor.index_select(0, indices)


@dataclass
class AttentionWeights:
    """The attention weights of one teacher-forced pass, and that pass's logits.

    Each tensor of a list is one layer's weights, (batch, heads, queries, keys): a distribution over
    the keys that are not padding. A family without multiple heads has heads = 1; one without a kind
    of attention gives an empty list for it.
    """

    logits: Tensor  # (batch, tgt_len, vocab), the logits of `forward` on the same inputs
    cross: list[Tensor]  # per decoder layer (batch, heads, tgt_len, src_len): row t is the position predicting target t
    encoder: list[Tensor] = field(default_factory=list)  # per encoder layer (batch, heads, src_len, src_len)
    decoder: list[Tensor] = field(default_factory=list)  # per decoder layer (batch, heads, tgt_len, tgt_len)


class EncoderDecoder(nn.Module):
    """Base class of every model family. See docs/design.md for the contract."""

    pad_id: int
    vocab_size: int  # rows of the output layer: ids the decoder can predict

    @property
    def model_dim(self) -> int:
        """The model's width, by which the paper's learning-rate schedule scales (d_model^-0.5)."""
        raise NotImplementedError

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        raise NotImplementedError

    def decode(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None]:
        raise NotImplementedError

    def forward_flops(self, batch_size: int, src_len: int, tgt_len: int) -> int:
        raise NotImplementedError

    @property
    def max_positions(self) -> int | None:
        return None

    def forward(self, src_tokens: Tensor, prev_tokens: Tensor) -> Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab)."""
        logits, _ = self.decode(prev_tokens, self.encode(src_tokens), None)
        return logits

    def attention(self, src_tokens: Tensor, prev_tokens: Tensor) -> AttentionWeights:
        """The teacher-forced pass of `forward`, with the attention weights of every layer: what the
        paper's figures 3-5 show, and what alignments are read from. Slower than `forward` (the
        weights are computed explicitly), so for inspecting a model, not for training or search."""
        raise NotImplementedError


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(batch, len) bool, True at padding."""
    return tokens.eq(pad_id)


def check_incremental(prev_tokens: Tensor, state: DecoderState | None) -> None:
    """Incremental decoding (a `state`) takes exactly one new position per call."""
    if state is not None and prev_tokens.size(1) != 1:
        raise ValueError(
            f"incremental decoding takes one new position per call, got prev_tokens of shape "
            f"{tuple(prev_tokens.shape)}"
        )


__all__ = [
    "AttentionWeights",
    "EncoderOutput",
    "DecoderState",
    "EncoderDecoder",
    "check_incremental",
    "count_parameters",
    "padding_mask",
]
