"""The one encoder/decoder interface that every model family implements.

Beam search, the trainer and the CLI only ever talk to `EncoderDecoder`; they never ask which
family they hold. Incremental decoding keeps its cache in a `DecoderState`, and both the encoder's
output and that state can be reordered along the batch dimension, which is all a beam search needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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

    `cache` holds what each row (hypothesis) computed from its own outputs so far, e.g. an LSTM's
    hidden state. `sequences` holds per-row tensors that grow by one position per step (the
    Transformer's self-attention keys and values), kept by `append` in preallocated buffers so that
    a step neither copies the earlier positions nor allocates. `source_cache` holds what a row
    computed from its encoder output alone, e.g. the cross-attention keys and values: the same for
    rows that decode the same source sentence, so it holds one row per source sentence, and beam
    search need not move it when beams of one sentence swap places.

    `rows_per_source`: consecutive rows i * g .. i * g + g - 1 decode source sentence i (beam search
    keeps the beams of a sentence together: g = beam), so a model may attend to one copy of each
    source for all its rows. With g = 1 (the default) every row has its own.

    `capacity` (optional) is the most positions the decoder will see (beam search knows it): the
    buffers of `sequences` are allocated at that length once; without it they double as they fill.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.cache: dict[str, Tensor] = {}
        self.sequences: dict[str, GrowingSequence] = {}
        self.source_cache: dict[str, Tensor] = {}
        self.steps = 0
        self.capacity = capacity
        self.rows_per_source = 1

    def append(self, name: str, value: Tensor, dim: int) -> Tensor:
        """Append `value` (the new positions along `dim`) to the sequence cached under `name`, and
        return the whole sequence so far: a view of the buffer, valid until the next reorder."""
        sequence = self.sequences.get(name)
        if sequence is None:
            sequence = self.sequences[name] = GrowingSequence(dim, self.capacity)
        return sequence.append(value)

    def reorder(
        self, indices: Tensor, *, same_sources: bool = False, rows_per_source: int | None = None
    ) -> None:
        """Keep, in place, batch row `indices[i]` as row i of every cached tensor.

        `rows_per_source` (default: unchanged) is the new number of rows per source sentence: each
        block of that many new rows must come from rows of one source. `same_sources=True` promises
        more: the new blocks decode the very same source sentences, in order (beam search choosing
        among the beams of each sentence, or giving each sentence `beam` rows after the first step),
        so `source_cache` stays as it is. Otherwise it keeps the sources of the new blocks.
        """
        group = self.rows_per_source if rows_per_source is None else rows_per_source
        if indices.numel() % group:
            raise ValueError(f"{indices.numel()} rows cannot form blocks of {group} rows per source")
        for name, tensor in self.cache.items():
            self.cache[name] = tensor.index_select(0, indices)
        for sequence in self.sequences.values():
            sequence.reorder(indices)
        if not same_sources:
            sources = indices.view(-1, group)[:, 0] if group > 1 else indices  # a row of each block
            sources = torch.div(sources, self.rows_per_source, rounding_mode="floor")
            for name, tensor in self.source_cache.items():
                self.source_cache[name] = tensor.index_select(0, sources)
        self.rows_per_source = group


class GrowingSequence:
    """A batch-first tensor that grows along `dim` one step at a time, in a buffer with room to spare.

    Appending writes the new positions in place (no `torch.cat` of the whole sequence each step, which
    is quadratic in the output length). Reordering the rows copies only the filled positions, into
    a second buffer of the same size that is then swapped in: beam search reorders every step, and
    writing into memory already allocated is about three times faster on a CPU than into a fresh
    tensor. The price is up to twice the memory of the cache itself.
    """

    def __init__(self, dim: int, capacity: int | None = None) -> None:
        self.dim, self.capacity, self.length = dim, capacity, 0
        self.buffer: Tensor | None = None
        self.spare: Tensor | None = None

    def filled(self) -> Tensor:
        assert self.buffer is not None
        return self.buffer.narrow(self.dim, 0, self.length)

    def append(self, value: Tensor) -> Tensor:
        dim, new = self.dim, value.size(self.dim)
        if self.buffer is None or self.buffer.size(dim) < self.length + new:
            self._grow(value, self.length + new)
        assert self.buffer is not None
        self.buffer.narrow(dim, self.length, new).copy_(value)
        self.length += new
        return self.filled()

    def _grow(self, value: Tensor, needed: int) -> None:
        current = 0 if self.buffer is None else self.buffer.size(self.dim)
        size = max(needed, 2 * current, self.capacity or 16)
        shape = list(value.shape)
        shape[self.dim] = size
        grown = value.new_empty(shape)
        if self.buffer is not None and self.length:
            grown.narrow(self.dim, 0, self.length).copy_(self.filled())
        self.buffer, self.spare = grown, None

    def reorder(self, indices: Tensor) -> None:
        if self.buffer is None:
            return
        rows = indices.size(0)
        if torch.is_grad_enabled() and self.buffer.requires_grad:  # out= records no gradient
            reordered = self.buffer.new_empty((rows, *self.buffer.shape[1:]))
            reordered.narrow(self.dim, 0, self.length).copy_(self.filled().index_select(0, indices))
            self.buffer, self.spare = reordered, None
            return
        if self.spare is None or self.spare.size(0) < rows or self.spare.shape[1:] != self.buffer.shape[1:]:
            self.spare = self.buffer.new_empty((rows, *self.buffer.shape[1:]))
        target = self.spare[:rows]
        torch.index_select(self.filled(), 0, indices, out=target.narrow(self.dim, 0, self.length))
        self.buffer, self.spare = target, self.buffer


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
    "GrowingSequence",
    "EncoderDecoder",
    "check_incremental",
    "count_parameters",
    "padding_mask",
]
