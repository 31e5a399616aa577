"""The convolutional baseline: ConvS2S.

Gehring, Auli, Grangier, Yarats and Dauphin (2017), "Convolutional Sequence to Sequence Learning":
learned position embeddings added to word embeddings (section 3.1); blocks of a 1-D convolution
with a gated linear unit (GLU) and a residual connection (3.2), causal in the decoder (left padding
of k - 1); multi-step attention in every decoder layer, with queries d = W h + b + g (g the
embedding of the previous target element), keys the encoder output z and values z + e (3.3);
the scaling of section 3.4 (residual sums and attention by sqrt(0.5), the conditional input c by
m sqrt(1/m) for m source elements, encoder gradients by 1 / (2 * attention layers)); weight
normalisation and the initialisation of section 3.5 (N(0, sqrt(4 (1 - p) / (k d))) for GLU
convolutions, N(0, sqrt((1 - p) / d)) for linear layers with dropout p on their input, N(0, 0.1) for
embeddings). Constants and the order of dropout and projections follow fairseq's fconv model, which
reproduces the paper.

Incremental decoding keeps, per decoder layer, the last k - 1 inputs of its convolution in the
DecoderState, so each new position costs the same whatever the sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List  # noqa: UP035 (OmegaConf config fields)

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from transformer_mt.models.dropout import Dropout
from transformer_mt.models.interface import (
    AttentionWeights,
    DecoderState,
    EncoderDecoder,
    EncoderOutput,
    check_incremental,
    padding_mask,
)

SQRT_HALF = math.sqrt(0.5)


def _wmt_en_de_layers() -> list[list[int]]:
    """The paper's WMT'14 En-De stack: 9 x [512, 3], 4 x [1024, 3], 2 x [2048, 1]."""
    return [[512, 3]] * 9 + [[1024, 3]] * 4 + [[2048, 1]] * 2


@dataclass
class ConvS2SConfig:
    """Defaults: the paper's WMT'14 En-De model (fairseq's fconv_wmt_en_de) with the dropout of
    fairseq's published training recipe for it (0.2)."""

    arch: str = "convs2s"
    embed_dim: int = 768
    # [channels, kernel_width] per layer; List, not list: OmegaConf reads these annotations
    encoder_layers: List[List[int]] = field(default_factory=_wmt_en_de_layers)  # noqa: UP006
    decoder_layers: List[List[int]] = field(default_factory=_wmt_en_de_layers)  # noqa: UP006
    out_embed_dim: int = 512  # the decoder output is projected to this size before the vocabulary
    dropout: float = 0.2
    max_positions: int = 1024  # rows of the learned position embeddings
    share_embeddings: bool = False  # tie the decoder's input and output embeddings

    def __post_init__(self) -> None:
        if self.arch != "convs2s":
            raise ValueError(f"ConvS2SConfig.arch must be 'convs2s', got {self.arch!r}")
        for name in ("embed_dim", "out_embed_dim", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("encoder_layers", "decoder_layers"):
            layers = [list(layer) for layer in getattr(self, name)]
            if not layers or any(len(layer) != 2 or min(layer) < 1 for layer in layers):
                raise ValueError(
                    f"model.{name} must be a non-empty list of [channels, kernel_width] pairs of positive "
                    f"integers, e.g. [[512, 3], [512, 3]]; got {getattr(self, name)}"
                )
            setattr(self, name, [[int(c), int(k)] for c, k in layers])
        if self.share_embeddings and self.out_embed_dim != self.embed_dim:
            raise ValueError(
                f"model.share_embeddings ties the decoder's input and output embeddings, which needs "
                f"out_embed_dim == embed_dim (got {self.out_embed_dim} and {self.embed_dim})"
            )


def _linear(in_features: int, out_features: int, dropout: float = 0.0) -> nn.Linear:
    """A weight-normalised linear layer, N(0, sqrt((1 - p) / in_features)) (paper section 3.5)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt((1.0 - dropout) / in_features))
    nn.init.zeros_(layer.bias)
    return weight_norm(layer)


def _glu_conv(in_channels: int, out_channels: int, kernel_width: int, dropout: float) -> nn.Conv1d:
    """A weight-normalised convolution with 2 * out_channels outputs, for a GLU (section 3.5)."""
    conv = nn.Conv1d(in_channels, 2 * out_channels, kernel_width)
    std = math.sqrt(4.0 * (1.0 - dropout) / (kernel_width * in_channels))
    nn.init.normal_(conv.weight, mean=0.0, std=std)
    nn.init.zeros_(conv.bias)
    return weight_norm(conv)


def _embedding(num_embeddings: int, dim: int, padding_idx: int | None) -> nn.Embedding:
    embedding = nn.Embedding(num_embeddings, dim, padding_idx=padding_idx)
    nn.init.normal_(embedding.weight, mean=0.0, std=0.1)
    if padding_idx is not None:
        with torch.no_grad():
            embedding.weight[padding_idx].zero_()
    return embedding


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward (section 3.4)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class EncoderConvLayer(nn.Module):
    """h = (GLU(conv(dropout(x))) + residual(x)) * sqrt(0.5), the output as long as the input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_width: int, dropout: float) -> None:
        super().__init__()
        self.residual = _linear(in_channels, out_channels) if in_channels != out_channels else None
        self.conv = _glu_conv(in_channels, out_channels, kernel_width, dropout)
        self.dropout = Dropout(dropout)
        self.padding = ((kernel_width - 1) // 2, kernel_width // 2)  # left, right

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (batch, src_len, in_channels), mask (batch, src_len) -> (batch, src_len, out_channels)."""
        residual = x if self.residual is None else self.residual(x)
        x = self.dropout(x.masked_fill(mask.unsqueeze(-1), 0.0))  # padding reads as the zero border
        x = self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)  # (batch, src_len, 2 out)
        return (F.glu(x, dim=-1) + residual) * SQRT_HALF


class MultiStepAttention(nn.Module):
    """One decoder layer's attention over the encoder output (section 3.3)."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.in_proj = _linear(channels, embed_dim)
        self.out_proj = _linear(embed_dim, channels)

    def forward(self, h: Tensor, target_embedding: Tensor, memory: EncoderOutput) -> tuple[Tensor, Tensor]:
        """h (batch, tgt_len, channels), target_embedding (batch, tgt_len, embed_dim) -> like h, and
        the attention weights (batch, tgt_len, src_len)."""
        d = (self.in_proj(h) + target_embedding) * SQRT_HALF  # (batch, tgt_len, embed_dim)
        scores = torch.bmm(d, memory.states.transpose(1, 2))  # (batch, tgt_len, src_len)
        scores = scores.masked_fill(memory.padding_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
        c = torch.bmm(weights, memory.extras["z_plus_e"])  # (batch, tgt_len, embed_dim)
        m = (~memory.padding_mask).sum(1).type_as(c).view(-1, 1, 1)  # source lengths
        c = c * m.sqrt()  # m * sqrt(1/m): undo the variance a uniform average removes
        return (self.out_proj(c) + h) * SQRT_HALF, weights


class DecoderConvLayer(nn.Module):
    """A causal GLU convolution, multi-step attention, a residual connection."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_width: int, embed_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.residual = _linear(in_channels, out_channels) if in_channels != out_channels else None
        self.conv = _glu_conv(in_channels, out_channels, kernel_width, dropout)
        self.attention = MultiStepAttention(out_channels, embed_dim)
        self.dropout = Dropout(dropout)
        self.kernel_width = kernel_width

    def forward(self, x: Tensor, target_embedding: Tensor, memory: EncoderOutput) -> tuple[Tensor, Tensor]:
        """Every position at once: x (batch, tgt_len, in_channels) -> (batch, tgt_len, out_channels),
        and the attention weights (batch, tgt_len, src_len). The convolution's input is left-padded
        with k - 1 zeros, so position t sees t - k + 1 .. t."""
        conv_input = F.pad(self.dropout(x).transpose(1, 2), (self.kernel_width - 1, 0))  # (b, in, k-1+t)
        return self._block(x, conv_input, target_embedding, memory)

    def step(
        self, x: Tensor, target_embedding: Tensor, memory: EncoderOutput, window: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One new position x (batch, 1, in_channels); `window` (batch, k - 1, in_channels) holds the
        inputs of the previous k - 1 positions (zeros before the first). Returns the output
        (batch, 1, out_channels) and the window for the next position."""
        recent = torch.cat([window, self.dropout(x)], dim=1)  # (batch, k, in_channels)
        return self._block(x, recent.transpose(1, 2), target_embedding, memory)[0], recent[:, 1:]

    def _block(
        self, x: Tensor, conv_input: Tensor, target_embedding: Tensor, memory: EncoderOutput
    ) -> tuple[Tensor, Tensor]:
        residual = x if self.residual is None else self.residual(x)
        h = F.glu(self.conv(conv_input).transpose(1, 2), dim=-1)  # (batch, tgt_len, out_channels)
        h, weights = self.attention(h, target_embedding, memory)
        return (h + residual) * SQRT_HALF, weights


class ConvS2S(EncoderDecoder):
    """The convolutional encoder-decoder behind the EncoderDecoder interface."""

    def __init__(self, cfg: ConvS2SConfig, *, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.vocab_size = vocab_size
        E, p = cfg.embed_dim, cfg.dropout
        self.dropout = Dropout(p)

        self.encoder_embed = _embedding(vocab_size, E, pad_id)
        self.encoder_positions = _embedding(cfg.max_positions, E, None)
        self.encoder_in = _linear(E, cfg.encoder_layers[0][0], dropout=p)
        self.encoder_layers = nn.ModuleList(
            EncoderConvLayer(c_in, c_out, k, p) for c_in, (c_out, k) in _with_inputs(cfg.encoder_layers)
        )
        self.encoder_out = _linear(cfg.encoder_layers[-1][0], E)
        self.encoder_grad_scale = 1.0 / (2.0 * len(cfg.decoder_layers))  # one attention per decoder layer

        self.decoder_embed = _embedding(vocab_size, E, pad_id)
        self.decoder_positions = _embedding(cfg.max_positions, E, None)
        self.decoder_in = _linear(E, cfg.decoder_layers[0][0], dropout=p)
        self.decoder_layers = nn.ModuleList(
            DecoderConvLayer(c_in, c_out, k, E, p) for c_in, (c_out, k) in _with_inputs(cfg.decoder_layers)
        )
        self.decoder_out = _linear(cfg.decoder_layers[-1][0], cfg.out_embed_dim)
        if cfg.share_embeddings:
            self.output = nn.Linear(cfg.out_embed_dim, vocab_size)
            nn.init.zeros_(self.output.bias)
            self.output.weight = self.decoder_embed.weight
        else:
            self.output = _linear(cfg.out_embed_dim, vocab_size, dropout=p)

    @property
    def model_dim(self) -> int:
        return self.cfg.embed_dim  # the embedding size

    @property
    def max_positions(self) -> int | None:
        return self.cfg.max_positions

    def _check_length(self, length: int, what: str) -> None:
        if length > self.cfg.max_positions:
            raise ValueError(
                f"{what} has {length} positions but model.max_positions={self.cfg.max_positions} "
                "(the learned position embeddings); filter long sentences out or raise model.max_positions"
            )

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        """src_tokens (batch, src_len) -> states z (batch, src_len, embed_dim), the attention keys;
        extras["z_plus_e"] = (z + e) * sqrt(0.5), the attention values."""
        self._check_length(src_tokens.size(1), "the source")
        mask = padding_mask(src_tokens, self.pad_id)  # (batch, src_len)
        positions = torch.arange(src_tokens.size(1), device=src_tokens.device)
        e = self.dropout(self.encoder_embed(src_tokens) + self.encoder_positions(positions))  # (b, s, E)
        x = self.encoder_in(e)  # (batch, src_len, channels)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        z = self.encoder_out(x).masked_fill(mask.unsqueeze(-1), 0.0)  # (batch, src_len, embed_dim)
        z = _ScaleGradient.apply(z, self.encoder_grad_scale)  # the embeddings' path e is not scaled
        return EncoderOutput(states=z, padding_mask=mask, extras={"z_plus_e": (z + e) * SQRT_HALF})

    def decode(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None]:
        """Logits (batch, tgt_len, vocab) of every position (state=None), or (batch, 1, vocab) of the
        one new position in prev_tokens (batch, 1), extending the cache in `state`."""
        logits, state, _ = self._decode(prev_tokens, memory, state)
        return logits, state

    def attention(self, src_tokens: Tensor, prev_tokens: Tensor) -> AttentionWeights:
        """`forward` with the multi-step attention weights of every decoder layer (one "head" each)."""
        logits, _, weights = self._decode(prev_tokens, self.encode(src_tokens), None)
        return AttentionWeights(logits=logits, cross=[w.unsqueeze(1) for w in weights])

    def _decode(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None, list[Tensor]]:
        """`decode`, and in teacher-forced decoding each layer's attention weights (batch, tgt_len, src_len)."""
        check_incremental(prev_tokens, state)
        start = 0 if state is None else state.steps
        self._check_length(start + prev_tokens.size(1), "the target")
        positions = torch.arange(start, start + prev_tokens.size(1), device=prev_tokens.device)
        g = self.dropout(self.decoder_embed(prev_tokens) + self.decoder_positions(positions))  # (b, t, E)
        x = self.decoder_in(g)  # (batch, tgt_len, channels)
        weights: list[Tensor] = []
        for i, layer in enumerate(self.decoder_layers):
            if state is None:
                x, layer_weights = layer(x, g, memory)
                weights.append(layer_weights)
                continue
            key = f"convs2s.window.{i}"  # this layer's last k - 1 inputs, (batch, k - 1, in_channels)
            window = state.cache.get(key)
            if window is None:  # the zeros a causal convolution sees before position 0
                window = x.new_zeros(x.size(0), layer.kernel_width - 1, x.size(2))
            x, state.cache[key] = layer.step(x, g, memory, window)
        x = self.dropout(self.decoder_out(x))  # (batch, tgt_len, out_embed_dim)
        logits = self.output(x)  # (batch, tgt_len, vocab)
        if state is not None:
            state.steps += 1
        return logits, state, weights

    def forward_flops(self, batch_size: int, src_len: int, tgt_len: int) -> int:
        """FLOPs of one teacher-forced forward pass, 2 per multiply-add, matrix products only (GLU,
        softmax, biases and weight normalisation left out). With E = embed_dim, O = out_embed_dim,
        S = src_len, T = tgt_len, V = vocab, and per layer c_in -> c_out channels of kernel width k:

            a layer, per position:  2 k c_in (2 c_out)       the convolution (doubled for the GLU)
                                  + 2 c_in c_out             a residual projection, where c_in != c_out
            encoder:   2 E c_0 S in, the layers over S, 2 c_L E S out
            decoder:   2 E c_0 T in, the layers over T, each with attention
                       2 c_out E T + 2 T S E + 2 T S E + 2 E c_out T (query, scores, context, out),
                       2 c_L O T + 2 O V T out
        """
        cfg = self.cfg
        E, S, T = cfg.embed_dim, src_len, tgt_len

        def stack(layers: list[list[int]], positions: int, attention: bool) -> int:
            flops, c_in = 0, layers[0][0]
            for c_out, k in layers:
                flops += positions * 2 * k * c_in * 2 * c_out
                if c_in != c_out:
                    flops += positions * 2 * c_in * c_out
                if attention:
                    flops += positions * (2 * c_out * E + 4 * S * E + 2 * E * c_out)
                c_in = c_out
            return flops

        encoder = S * 2 * E * cfg.encoder_layers[0][0] + stack(cfg.encoder_layers, S, False)
        encoder += S * 2 * cfg.encoder_layers[-1][0] * E
        decoder = T * 2 * E * cfg.decoder_layers[0][0] + stack(cfg.decoder_layers, T, True)
        decoder += T * 2 * cfg.decoder_layers[-1][0] * cfg.out_embed_dim
        decoder += T * 2 * cfg.out_embed_dim * self.vocab_size
        return batch_size * (encoder + decoder)


def _with_inputs(layers: list[list[int]]) -> list[tuple[int, list[int]]]:
    """[[c_1, k_1], [c_2, k_2], ...] -> [(c_1, [c_1, k_1]), (c_1, [c_2, k_2]), ...]: each layer's input
    channels (the first layer's input is projected to its own width)."""
    inputs = [layers[0][0]] + [c for c, _ in layers[:-1]]
    return list(zip(inputs, layers, strict=True))


__all__ = ["ConvS2SConfig", "ConvS2S"]
