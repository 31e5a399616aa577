"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017, section 3).

An encoder of N layers (self-attention, feed-forward) and a decoder of N layers (causal
self-attention, encoder-decoder attention, feed-forward), each sub-layer wrapped as
LayerNorm(x + Dropout(Sublayer(x))) (section 3.1, "post" norm) or, as later work found to train more
stably, x + Dropout(Sublayer(LayerNorm(x))) with a final LayerNorm after each stack ("pre" norm).
Token embeddings are scaled by sqrt(d_model) and summed with sinusoidal (section 3.5) or learned
position embeddings; with a joint vocabulary one matrix serves the source embedding, the target
embedding and the pre-softmax projection (section 3.4).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_mt.models.attention import CrossAttention, SelfAttention
from transformer_mt.models.dropout import Dropout
from transformer_mt.models.interface import (
    AttentionWeights,
    DecoderState,
    EncoderDecoder,
    EncoderOutput,
    check_incremental,
)


@dataclass
class TransformerConfig:
    """Sizes and choices of a Transformer; the defaults are the paper's base model (Table 3)."""

    arch: str = "transformer"
    d_model: int = 512
    ffn_dim: int = 2048  # d_ff, the inner size of the position-wise feed-forward network
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1  # P_drop: sub-layer outputs and embedding sums
    attention_dropout: float = 0.0  # on the attention weights
    activation_dropout: float = 0.0  # after the ReLU of the feed-forward network
    norm: str = "post"  # "post" (the paper) or "pre"
    positions: str = "sinusoidal"  # or "learned"
    max_positions: int = 1024
    share_embeddings: bool = True  # one matrix for source, target and output (joint vocabulary)
    # Restricted self-attention: a neighbourhood of r positions (Table 1). Optional, not `int | None`: OmegaConf.
    attention_window: Optional[int] = None  # noqa: UP045

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"model config: {message}")

        if self.arch != "transformer":
            fail(f"arch={self.arch!r}, expected 'transformer' for a TransformerConfig")
        for name in ("d_model", "ffn_dim", "heads", "encoder_layers", "decoder_layers", "max_positions"):
            if getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)} must be a positive integer")
        if self.d_model % self.heads:
            fail(
                f"d_model={self.d_model} must be divisible by heads={self.heads} (each head gets d_model / heads)"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.norm not in ("post", "pre"):
            fail(f"norm={self.norm!r} must be 'post' (as the paper) or 'pre'")
        if self.positions not in ("sinusoidal", "learned"):
            fail(f"positions={self.positions!r} must be 'sinusoidal' or 'learned'")
        if self.positions == "sinusoidal" and self.d_model % 2:
            fail(f"sinusoidal positions pair sines and cosines: d_model={self.d_model} must be even")
        if self.attention_window is not None and self.attention_window < 1:
            fail(f"attention_window={self.attention_window} must be >= 1, or null for full self-attention")
        if self.attention_window is not None and self.attention_window >= self.max_positions:
            fail(
                f"attention_window={self.attention_window} is not smaller than max_positions={self.max_positions}, "
                "so it restricts nothing; set attention_window=null for full self-attention or a smaller window"
            )


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/dim)), PE(pos, 2i+1) = cos(pos / 10000^(2i/dim)) (section 3.5)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table  # (length, dim)


class PositionEmbedding(nn.Module):
    """Position vectors for positions start .. start + length - 1, sinusoidal (a fixed table) or learned."""

    def __init__(self, kind: str, max_positions: int, dim: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        if kind == "learned":
            self.table = nn.Parameter(torch.empty(max_positions, dim))
            nn.init.normal_(self.table, mean=0.0, std=dim**-0.5)
        else:  # a buffer: follows .to(device), not saved in checkpoints
            self.register_buffer("table", sinusoidal_positions(max_positions, dim), persistent=False)

    def forward(self, start: int, length: int) -> Tensor:
        if start + length > self.max_positions:
            raise ValueError(
                f"a sequence of {start + length} positions is longer than model.max_positions="
                f"{self.max_positions}; filter longer sentences or build the model with a larger max_positions"
            )
        return self.table[start : start + length]  # (length, dim)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position alike (section 3.3)."""

    def __init__(self, d_model: int, ffn_dim: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.dropout = Dropout(activation_dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


def residual(
    x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: nn.LayerNorm, dropout: Dropout, pre_norm: bool
) -> Tensor:
    """LayerNorm(x + Dropout(Sublayer(x))) (section 3.1, 5.4), or x + Dropout(Sublayer(LayerNorm(x)))."""
    if pre_norm:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, index: int) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.self_attn = SelfAttention(
            cfg.d_model,
            cfg.heads,
            dropout=cfg.attention_dropout,
            window=cfg.attention_window,
            name=f"enc{index}.self",
        )
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """x: (batch, src_len, d_model); padding_mask: (batch, src_len), True at padding."""
        x = residual(
            x, lambda h: self.self_attn(h, padding_mask), self.self_attn_norm, self.dropout, self.pre_norm
        )
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.pre_norm)

    def with_weights(self, x: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` with its self-attention weights computed explicitly (batch, heads, src_len, src_len)."""
        found: list[Tensor] = []

        def attend(h: Tensor) -> Tensor:
            out, w = self.self_attn.with_weights(h, padding_mask)
            found.append(w)
            return out

        x = residual(x, attend, self.self_attn_norm, self.dropout, self.pre_norm)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.pre_norm), found[0]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, index: int) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.self_attn = SelfAttention(
            cfg.d_model,
            cfg.heads,
            dropout=cfg.attention_dropout,
            causal=True,
            window=cfg.attention_window,
            name=f"dec{index}.self",
        )
        self.cross_attn = CrossAttention(
            cfg.d_model, cfg.heads, dropout=cfg.attention_dropout, name=f"dec{index}.cross"
        )
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, memory: EncoderOutput, state: DecoderState | None) -> Tensor:
        """x: (batch, tgt_len, d_model), or (batch, 1, d_model) with a state."""
        x = residual(
            x, lambda h: self.self_attn(h, state=state), self.self_attn_norm, self.dropout, self.pre_norm
        )
        x = residual(
            x,
            lambda h: self.cross_attn(h, memory.states, memory.padding_mask, state),
            self.cross_attn_norm,
            self.dropout,
            self.pre_norm,
        )
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.pre_norm)

    def with_weights(self, x: Tensor, memory: EncoderOutput) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced `forward` with its attention weights computed explicitly: the output, the
        self-attention weights (batch, heads, tgt_len, tgt_len) and the cross-attention weights
        (batch, heads, tgt_len, src_len)."""
        found: list[Tensor] = []

        def attend_self(h: Tensor) -> Tensor:
            out, w = self.self_attn.with_weights(h)
            found.append(w)
            return out

        def attend_source(h: Tensor) -> Tensor:
            out, w = self.cross_attn.with_weights(h, memory.states, memory.padding_mask)
            found.append(w)
            return out

        x = residual(x, attend_self, self.self_attn_norm, self.dropout, self.pre_norm)
        x = residual(x, attend_source, self.cross_attn_norm, self.dropout, self.pre_norm)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.pre_norm), found[0], found[1]


class Transformer(EncoderDecoder):
    """The Transformer behind the `EncoderDecoder` interface (docs/design.md)."""

    def __init__(self, cfg: TransformerConfig, *, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is not an id of a vocabulary of {vocab_size} entries")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.embed_scale = math.sqrt(cfg.d_model)

        # With share_embeddings, one matrix (a joint vocabulary); otherwise the decoder's own matrix
        # still doubles as the output projection (fairseq's share_decoder_input_output_embed).
        self.decoder_embed = self._embedding(vocab_size, cfg.d_model, pad_id)
        self.encoder_embed = (
            self.decoder_embed if cfg.share_embeddings else self._embedding(vocab_size, cfg.d_model, pad_id)
        )
        self.encoder_positions = PositionEmbedding(cfg.positions, cfg.max_positions, cfg.d_model)
        self.decoder_positions = PositionEmbedding(cfg.positions, cfg.max_positions, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        # Pre-norm leaves the residual stream unnormalised: one LayerNorm closes each stack.
        pre_norm = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre_norm else nn.Identity()
        # The pre-softmax projection is the decoder embedding matrix. None: multiply by it; int8
        # decoding (decoding/quantize.py) puts a quantized copy here. Never saved in checkpoints.
        self.output_projection: nn.Module | None = None

    @staticmethod
    def _embedding(vocab_size: int, dim: int, pad_id: int) -> nn.Embedding:
        embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(embed.weight, mean=0.0, std=dim**-0.5)
        with torch.no_grad():
            embed.weight[pad_id].zero_()
        return embed

    @property
    def model_dim(self) -> int:
        return self.cfg.d_model  # d_model

    @property
    def max_positions(self) -> int | None:
        return self.cfg.max_positions

    def _embed(self, tokens: Tensor, embed: nn.Embedding, positions: PositionEmbedding, start: int) -> Tensor:
        """(batch, len) ids -> (batch, len, d_model): scaled embeddings plus positions, then dropout."""
        x = embed(tokens) * self.embed_scale + positions(start, tokens.size(1))
        return self.dropout(x)

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        """src_tokens: (batch, src_len) padded with PAD -> states (batch, src_len, d_model)."""
        padding_mask = src_tokens.eq(self.pad_id)  # (batch, src_len)
        x = self._embed(src_tokens, self.encoder_embed, self.encoder_positions, 0)
        for layer in self.encoder_layers:
            x = layer(x, padding_mask)
        return EncoderOutput(states=self.encoder_norm(x), padding_mask=padding_mask)

    def decode(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None]:
        """Logits (batch, tgt_len, vocab) of every position (state=None), or (batch, 1, vocab) of the
        one new position in `prev_tokens` (batch, 1), extending the cache in `state`."""
        check_incremental(prev_tokens, state)
        start = 0 if state is None else state.steps
        x = self._embed(prev_tokens, self.decoder_embed, self.decoder_positions, start)
        for layer in self.decoder_layers:
            x = layer(x, memory, state)
        x = self.decoder_norm(x)
        if self.output_projection is None:
            logits = F.linear(x, self.decoder_embed.weight)  # (batch, tgt_len, vocab)
        else:
            logits = self.output_projection(x)
        if state is not None:
            state.steps += 1
        return logits, state

    def attention(self, src_tokens: Tensor, prev_tokens: Tensor) -> AttentionWeights:
        """`forward` with every layer's attention weights: encoder self-attention, decoder
        self-attention and encoder-decoder attention, (batch, heads, queries, keys) each."""
        padding_mask = src_tokens.eq(self.pad_id)  # (batch, src_len)
        x = self._embed(src_tokens, self.encoder_embed, self.encoder_positions, 0)
        encoder: list[Tensor] = []
        for layer in self.encoder_layers:
            x, weights = layer.with_weights(x, padding_mask)
            encoder.append(weights)
        memory = EncoderOutput(states=self.encoder_norm(x), padding_mask=padding_mask)
        y = self._embed(prev_tokens, self.decoder_embed, self.decoder_positions, 0)
        decoder, cross = [], []
        for layer in self.decoder_layers:
            y, self_weights, cross_weights = layer.with_weights(y, memory)
            decoder.append(self_weights)
            cross.append(cross_weights)
        logits = F.linear(self.decoder_norm(y), self.decoder_embed.weight)  # (batch, tgt_len, vocab)
        return AttentionWeights(logits=logits, cross=cross, encoder=encoder, decoder=decoder)

    def forward_flops(self, batch_size: int, src_len: int, tgt_len: int) -> int:
        """FLOPs of one teacher-forced forward pass, 2 per multiply-add, matrix products only.

        With B = batch_size, S = src_len, T = tgt_len, d = d_model, f = ffn_dim, V = vocab size, and
        S' = min(2r + 1, S), T' = min(r + 1, T) keys per query under an attention window r
        (S' = S, T' = T without one: dense attention is counted over the whole padded square, as the
        kernels compute it, causal masking included):

            encoder layer:  8 B S d^2      Q, K, V, output projections
                          + 4 B S S' d     Q K^T and A V
                          + 4 B S d f      feed-forward
            decoder layer:  8 B T d^2 + 4 B T T' d     self-attention
                          + 4 B T d^2 + 4 B S d^2      cross-attention projections (Q, out on T; K, V on S)
                          + 4 B T S d                  cross-attention Q K^T and A V
                          + 4 B T d f                  feed-forward
            output:         2 B T d V                  projection to the vocabulary

        Embedding lookups, biases, softmax, layer norms and dropout are not counted.
        """
        cfg = self.cfg
        b, s, t, d, f = batch_size, src_len, tgt_len, cfg.d_model, cfg.ffn_dim
        r = cfg.attention_window
        s_keys = s if r is None else min(2 * r + 1, s)
        t_keys = t if r is None else min(r + 1, t)
        encoder_layer = 8 * b * s * d * d + 4 * b * s * s_keys * d + 4 * b * s * d * f
        decoder_layer = (
            8 * b * t * d * d
            + 4 * b * t * t_keys * d
            + 4 * b * t * d * d
            + 4 * b * s * d * d
            + 4 * b * t * s * d
            + 4 * b * t * d * f
        )
        output = 2 * b * t * d * self.vocab_size
        return cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + output


__all__ = ["TransformerConfig", "Transformer", "sinusoidal_positions"]
