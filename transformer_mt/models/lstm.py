"""The LSTM baseline: stacked LSTMs with global attention, with or without input feeding.

Luong, Pham and Manning (2015), "Effective Approaches to Attention-based Neural Machine
Translation": a stacked LSTM encoder and decoder (section 3), global attention with the "general"
score h_t^T W_a h_s (section 3.1), the attentional hidden state h~_t = tanh(W_c [c_t; h_t]) that
feeds the softmax (eq. 5), and optionally input feeding: h~_t is concatenated to the next step's
input (section 3.3). `attention="bahdanau"` swaps in the additive score v^T tanh(W_1 h_s + W_2 h_t)
of Bahdanau et al. (2015) (Luong's "concat") inside the same decoder.

Where we differ from Luong: the first encoder layer is bidirectional (as in GNMT and fairseq's
LSTM), its two directions concatenated and projected back to `hidden_size`, instead of reading the
source reversed; source, target and output embeddings are tied (one joint vocabulary), and with
`scale_embeddings` multiplied by sqrt(embed_dim) on input, as in the Transformer.

Decoder initial state: decoder layer l starts from the final (h, c) of encoder layer l (for the
bidirectional first layer, the sum of its two directions' final states); decoder layers deeper than
the encoder start from zeros. The first input-feeding vector is zeros.

Teacher-forced decoding (training) takes one of two paths:
- with input feeding, step t needs h~_{t-1}, so it loops over target positions, one small LSTM call
  and one attention per position: the same step function as incremental decoding;
- without it (`input_feeding=False`), the decoder LSTM runs over the whole target sequence in one
  fused `nn.LSTM` call, then attention, W_c and the output layer for all positions at once (batched
  matrix products, source padding masked). Incremental decoding still runs one position at a time,
  and gives the same logits (tests/test_lstm.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from transformer_mt.models.dropout import Dropout
from transformer_mt.models.interface import (
    AttentionWeights,
    DecoderState,
    EncoderDecoder,
    EncoderOutput,
    check_incremental,
    padding_mask,
)

ATTENTION_TYPES = ("luong", "bahdanau")


@dataclass
class LSTMConfig:
    """Defaults: Luong et al. (2015) on WMT'14 En-De: 4 layers, 1000 cells, 1000-dim embeddings,
    dropout 0.2, global "general" attention with input feeding."""

    arch: str = "lstm"
    embed_dim: int = 1000
    hidden_size: int = 1000
    encoder_layers: int = 4
    decoder_layers: int = 4
    bidirectional_first: bool = True  # the first encoder layer reads both ways
    dropout: float = 0.2
    attention: str = "luong"  # "luong" (general score) or "bahdanau" (additive score)
    input_feeding: bool = True
    share_embeddings: bool = True  # source, target and output embeddings are one matrix
    # "uniform": every parameter in [-0.1, 0.1] (Luong section 4.1, made for 1000 cells and SGD);
    # "xavier": Glorot-uniform matrices, zero biases but forget gates at 1, N(0, 1/embed_dim)
    # embeddings. Small models learn far faster with xavier: at 128 cells, the uniform init's
    # signals are so small that Adam spends hundreds of steps at unigram loss before the decoder
    # starts to use its inputs.
    init: str = "uniform"
    # Multiply embeddings by sqrt(embed_dim) where they enter the encoder and decoder (not at the tied
    # output), as the Transformer does (Vaswani et al. section 3.4). With init="xavier" the embeddings
    # are N(0, 1/embed_dim), sized for the output layer: unscaled, the LSTMs' inputs are sqrt(embed_dim)
    # times smaller than Glorot's matrices assume, and at 256/384 the decoder's output starts near 0.007
    # (tests/test_lstm.py), so the model sits near unigram loss for hundreds of steps.
    scale_embeddings: bool = False
    # None: any length. Optional, not `int | None`: OmegaConf reads these annotations.
    max_positions: Optional[int] = None  # noqa: UP045

    def __post_init__(self) -> None:
        if self.arch != "lstm":
            raise ValueError(f"LSTMConfig.arch must be 'lstm', got {self.arch!r}")
        for name in ("embed_dim", "hidden_size", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.init not in ("uniform", "xavier"):
            raise ValueError(f"model.init must be 'uniform' or 'xavier', got {self.init!r}")
        if self.attention not in ATTENTION_TYPES:
            raise ValueError(f"model.attention must be one of {ATTENTION_TYPES}, got {self.attention!r}")
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"model.max_positions must be positive or null, got {self.max_positions}")


class LuongAttention(nn.Module):
    """Global attention, "general" score: score(h_t, h_s) = h_t . (W_a h_s) (Luong section 3.1)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)  # W_a

    def keys(self, states: Tensor) -> Tensor:
        """Computed once per source sentence: (batch, src_len, hidden) -> (batch, src_len, hidden)."""
        return self.key_proj(states)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (batch, tgt_len, hidden), keys (batch, src_len, hidden) -> (batch, tgt_len, src_len)."""
        return torch.bmm(query, keys.transpose(1, 2))


class BahdanauAttention(nn.Module):
    """Additive score: score(h_t, h_s) = v . tanh(W_1 h_s + W_2 h_t) (Bahdanau et al. 2015)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)  # W_1
        self.query_proj = nn.Linear(hidden_size, hidden_size)  # W_2 (and the bias)
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def keys(self, states: Tensor) -> Tensor:
        return self.key_proj(states)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        q = self.query_proj(query)  # (batch, tgt_len, hidden)
        hidden = torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))  # (batch, tgt_len, src_len, hidden)
        return self.v(hidden).squeeze(-1)  # (batch, tgt_len, src_len)


class LSTMEncoder(nn.Module):
    """Embeddings, an optional bidirectional first layer (projected to hidden_size), then LSTMs."""

    def __init__(self, cfg: LSTMConfig, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed
        self.embed_scale = math.sqrt(cfg.embed_dim) if cfg.scale_embeddings else 1.0
        self.dropout = Dropout(cfg.dropout)
        hidden, rest_layers, rest_input = cfg.hidden_size, cfg.encoder_layers, cfg.embed_dim
        self.first: nn.LSTM | None = None
        if cfg.bidirectional_first:
            self.first = nn.LSTM(cfg.embed_dim, hidden, batch_first=True, bidirectional=True)
            self.merge = nn.Linear(2 * hidden, hidden)  # both directions -> hidden_size
            rest_layers, rest_input = cfg.encoder_layers - 1, hidden
        self.rest: nn.LSTM | None = None
        if rest_layers > 0:
            between = cfg.dropout if rest_layers > 1 else 0.0  # nn.LSTM drops out between its layers
            self.rest = nn.LSTM(rest_input, hidden, num_layers=rest_layers, batch_first=True, dropout=between)

    def forward(self, src_tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(batch, src_len) -> outputs (batch, src_len, hidden) and final h, c (batch, layers, hidden).

        The LSTMs run over packed sequences, so no output of a real token depends on padding."""
        lengths = (~mask).sum(1).clamp(min=1).cpu()  # pack_padded_sequence wants lengths on the CPU
        x = self.dropout(self.embed(src_tokens) * self.embed_scale)  # (batch, src_len, embed_dim)
        finals_h, finals_c = [], []
        if self.first is not None:
            # x (batch, src_len, 2 hidden): both directions; h, c (2, batch, hidden)
            x, (h, c) = _run_packed(self.first, x, lengths)
            x = self.merge(x)  # (batch, src_len, hidden)
            finals_h.append(h.sum(0, keepdim=True))
            finals_c.append(c.sum(0, keepdim=True))
        if self.rest is not None:
            x, (h, c) = _run_packed(self.rest, self.dropout(x) if self.first is not None else x, lengths)
            finals_h.append(h)
            finals_c.append(c)
        x = x.masked_fill(mask.unsqueeze(-1), 0.0)
        # (layers, batch, hidden) -> batch-first, so that EncoderOutput.reorder can shuffle them
        return x, torch.cat(finals_h).transpose(0, 1), torch.cat(finals_c).transpose(0, 1)


def _run_packed(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run `lstm` over the first `lengths[i]` positions of row i only; padded outputs are zeros."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h, c) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, (h, c)


class LSTMDecoder(nn.Module):
    """Stacked LSTM over [embedding; previous attentional vector], attention, tanh(W_c [c; h])."""

    def __init__(self, cfg: LSTMConfig, embed: nn.Embedding, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_size
        self.embed = embed
        self.embed_scale = math.sqrt(cfg.embed_dim) if cfg.scale_embeddings else 1.0
        self.dropout = Dropout(cfg.dropout)
        input_size = cfg.embed_dim + hidden if cfg.input_feeding else cfg.embed_dim
        between = cfg.dropout if cfg.decoder_layers > 1 else 0.0
        self.lstm = nn.LSTM(
            input_size, hidden, num_layers=cfg.decoder_layers, batch_first=True, dropout=between
        )
        self.attention = LuongAttention(hidden) if cfg.attention == "luong" else BahdanauAttention(hidden)
        self.combine = nn.Linear(2 * hidden, hidden, bias=False)  # W_c of eq. 5
        # Tied output embeddings need hidden_size -> embed_dim first when the two differ.
        self.out_proj: nn.Linear | None = None
        if cfg.share_embeddings and cfg.embed_dim != hidden:
            self.out_proj = nn.Linear(hidden, cfg.embed_dim, bias=False)
        self.output = nn.Linear(cfg.embed_dim if cfg.share_embeddings else hidden, vocab_size)
        if cfg.share_embeddings:
            self.output.weight = embed.weight

    def initial_hidden(self, memory: EncoderOutput) -> tuple[Tensor, Tensor]:
        """(h, c), each (decoder_layers, batch, hidden), from the encoder's final states."""
        states = []
        for name in ("final_h", "final_c"):
            final = memory.extras[name][:, : self.cfg.decoder_layers]  # (batch, layers, hidden)
            missing = self.cfg.decoder_layers - final.size(1)
            if missing > 0:
                final = F.pad(final, (0, 0, 0, missing))  # deeper decoder layers start from zeros
            states.append(final.transpose(0, 1).contiguous())
        return states[0], states[1]

    def attend(self, h: Tensor, memory: EncoderOutput) -> tuple[Tensor, Tensor]:
        """Top-layer states (batch, tgt_len, hidden) -> attentional states h~ (batch, tgt_len, hidden)
        and the attention weights a_t (batch, tgt_len, src_len)."""
        scores = self.attention.scores(h, memory.extras["attention_keys"])  # (batch, tgt_len, src_len)
        scores = scores.masked_fill(memory.padding_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, memory.states)  # (batch, tgt_len, hidden)
        return torch.tanh(self.combine(torch.cat([context, h], dim=-1))), weights

    def step(
        self, embedded: Tensor, feed: Tensor | None, hidden: tuple[Tensor, Tensor], memory: EncoderOutput
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One position: embedded (batch, embed_dim), feed h~_{t-1} (batch, hidden) with input feeding
        (None without) -> h~_t (batch, hidden), the LSTM's new (h, c) and the attention weights
        (batch, src_len)."""
        x = embedded if feed is None else torch.cat([embedded, feed], dim=-1)
        out, hidden = self.lstm(x.unsqueeze(1), hidden)  # (batch, 1, hidden)
        attentional, weights = self.attend(out, memory)
        return attentional.squeeze(1), hidden, weights.squeeze(1)

    def logits(self, attentional: Tensor) -> Tensor:
        """(batch, tgt_len, hidden) -> (batch, tgt_len, vocab)."""
        x = self.dropout(attentional)
        if self.out_proj is not None:
            x = self.out_proj(x)
        return self.output(x)

    def embed_tokens(self, prev_tokens: Tensor) -> Tensor:
        """(batch, tgt_len) -> (batch, tgt_len, embed_dim), scaled and dropped out."""
        return self.dropout(self.embed(prev_tokens) * self.embed_scale)

    def teacher_forced(self, embedded: Tensor, memory: EncoderOutput) -> Tensor:
        """Every position: embedded (batch, tgt_len, embed_dim) -> h~ (batch, tgt_len, hidden)."""
        return self.teacher_forced_with_weights(embedded, memory)[0]

    def teacher_forced_with_weights(self, embedded: Tensor, memory: EncoderOutput) -> tuple[Tensor, Tensor]:
        """`teacher_forced`, and the attention weights (batch, tgt_len, src_len) of every position."""
        hidden = self.initial_hidden(memory)
        if not self.cfg.input_feeding:  # no feedback: one fused LSTM call over the whole sequence
            out, _ = self.lstm(embedded, hidden)  # (batch, tgt_len, hidden)
            return self.attend(out, memory)
        feed = embedded.new_zeros(embedded.size(0), self.cfg.hidden_size)
        outputs, weights = [], []
        for t in range(embedded.size(1)):  # h~_{t-1} enters step t: a loop over time
            feed, hidden, step_weights = self.step(embedded[:, t], feed, hidden, memory)
            outputs.append(feed)
            weights.append(step_weights)
        return torch.stack(outputs, dim=1), torch.stack(weights, dim=1)

    def incremental(self, embedded: Tensor, memory: EncoderOutput, state: DecoderState) -> Tensor:
        """The one new position: embedded (batch, 1, embed_dim) -> h~ (batch, 1, hidden); extends the
        cache, which is batch-first (batch, layers, hidden) so that DecoderState.reorder works."""
        if state.steps == 0:
            h, c = self.initial_hidden(memory)
        else:
            h = state.cache["lstm.h"].transpose(0, 1).contiguous()
            c = state.cache["lstm.c"].transpose(0, 1).contiguous()
        feed = None
        if self.cfg.input_feeding:  # h~ of the previous position, zeros before the first
            feed = state.cache.get("lstm.feed")
            if feed is None:
                feed = embedded.new_zeros(embedded.size(0), self.cfg.hidden_size)
        attentional, (h, c), _ = self.step(embedded[:, 0], feed, (h, c), memory)
        state.cache["lstm.h"], state.cache["lstm.c"] = h.transpose(0, 1), c.transpose(0, 1)
        if self.cfg.input_feeding:
            state.cache["lstm.feed"] = attentional
        state.steps += 1
        return attentional.unsqueeze(1)

    def forward(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None]:
        embedded = self.embed_tokens(prev_tokens)  # (batch, tgt_len, embed_dim)
        if state is None:
            return self.logits(self.teacher_forced(embedded, memory)), None
        return self.logits(self.incremental(embedded, memory, state)), state


class LSTMSeq2Seq(EncoderDecoder):
    """Luong-style attentional LSTM encoder-decoder behind the EncoderDecoder interface."""

    def __init__(self, cfg: LSTMConfig, *, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.vocab_size = vocab_size
        src_embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=pad_id)
        tgt_embed = src_embed
        if not cfg.share_embeddings:
            tgt_embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=pad_id)
        self.encoder = LSTMEncoder(cfg, src_embed)
        self.decoder = LSTMDecoder(cfg, tgt_embed, vocab_size)
        self._init_parameters(cfg.init)
        with torch.no_grad():
            src_embed.weight[pad_id].zero_()
            tgt_embed.weight[pad_id].zero_()

    def _init_parameters(self, kind: str) -> None:
        if kind == "uniform":  # Luong section 4.1: every parameter uniform in [-0.1, 0.1]
            for p in self.parameters():
                nn.init.uniform_(p, -0.1, 0.1)
            return
        for name, p in self.named_parameters():
            if "embed" in name and p.dim() == 2:
                nn.init.normal_(p, std=self.cfg.embed_dim**-0.5)
            elif p.dim() >= 2:
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)
                if name.split(".")[-1].startswith("bias_ih"):  # gates i, f, g, o: forget gate bias 1
                    hidden = p.numel() // 4
                    with torch.no_grad():
                        p[hidden : 2 * hidden].fill_(1.0)

    @property
    def model_dim(self) -> int:
        return self.cfg.hidden_size  # the LSTM's hidden size

    @property
    def max_positions(self) -> int | None:
        return self.cfg.max_positions

    def _check_length(self, length: int, what: str) -> None:
        if self.cfg.max_positions is not None and length > self.cfg.max_positions:
            raise ValueError(
                f"{what} has {length} positions but model.max_positions={self.cfg.max_positions}; "
                "filter long sentences out or raise model.max_positions"
            )

    def encode(self, src_tokens: Tensor) -> EncoderOutput:
        """src_tokens (batch, src_len) -> states (batch, src_len, hidden); extras: the attention keys
        (batch, src_len, hidden) and the final h, c (batch, encoder layers, hidden)."""
        self._check_length(src_tokens.size(1), "the source")
        mask = padding_mask(src_tokens, self.pad_id)  # (batch, src_len)
        states, final_h, final_c = self.encoder(src_tokens, mask)
        keys = self.decoder.attention.keys(states)  # once per sentence, not once per step
        return EncoderOutput(
            states=states,
            padding_mask=mask,
            extras={"attention_keys": keys, "final_h": final_h, "final_c": final_c},
        )

    def decode(
        self, prev_tokens: Tensor, memory: EncoderOutput, state: DecoderState | None
    ) -> tuple[Tensor, DecoderState | None]:
        """Logits (batch, tgt_len, vocab) of every position (state=None), or (batch, 1, vocab) of the
        one new position in prev_tokens (batch, 1), extending the cache in `state`."""
        check_incremental(prev_tokens, state)
        self._check_length(prev_tokens.size(1) if state is None else state.steps + 1, "the target")
        return self.decoder(prev_tokens, memory, state)

    def attention(self, src_tokens: Tensor, prev_tokens: Tensor) -> AttentionWeights:
        """`forward` with the global attention weights a_t (Luong eq. 7): one "layer", one "head"."""
        self._check_length(prev_tokens.size(1), "the target")
        memory = self.encode(src_tokens)
        embedded = self.decoder.embed_tokens(prev_tokens)
        attentional, weights = self.decoder.teacher_forced_with_weights(embedded, memory)
        return AttentionWeights(logits=self.decoder.logits(attentional), cross=[weights.unsqueeze(1)])

    def forward_flops(self, batch_size: int, src_len: int, tgt_len: int) -> int:
        """FLOPs of one teacher-forced forward pass, 2 per multiply-add, matrix products only
        (gate non-linearities, softmax and biases are left out). With E = embed_dim, H = hidden_size,
        S = src_len, T = tgt_len, V = vocab and an LSTM layer of input size i costing 8 H (i + H) per
        position and direction (four gates):

            encoder:   bidirectional first layer 2 * 8 H (E + H) S + merge 4 H^2 S, then 8 H (2H) S per layer
            keys:      2 H^2 S (W_a h_s, or W_1 h_s)
            decoder:   8 H (E + H + H) T for the first layer (E + H without input feeding), 8 H (2H) T per
                       further layer; per target position: query 2 H^2 (additive only), scores 2 S H,
                       context 2 S H, combine 4 H^2, output [2 H E] + 2 V (E or H)
        """
        cfg = self.cfg
        E, H, S, T, V = cfg.embed_dim, cfg.hidden_size, src_len, tgt_len, self.vocab_size

        def lstm(inputs: int) -> int:  # one layer, one direction, one position
            return 8 * H * (inputs + H)

        encoder = 0
        layers_left, inputs = cfg.encoder_layers, E
        if cfg.bidirectional_first:
            encoder += S * (2 * lstm(E) + 2 * (2 * H) * H)
            layers_left, inputs = layers_left - 1, H
        for _ in range(layers_left):
            encoder += S * lstm(inputs)
            inputs = H
        keys = S * 2 * H * H

        first_input = E + H if cfg.input_feeding else E
        decoder = T * (lstm(first_input) + (cfg.decoder_layers - 1) * lstm(H))
        query = 2 * H * H if cfg.attention == "bahdanau" else 0
        decoder += T * (query + 2 * S * H + 2 * S * H + 2 * (2 * H) * H)
        out_dim = E if cfg.share_embeddings else H
        if cfg.share_embeddings and E != H:
            decoder += T * 2 * H * E
        decoder += T * 2 * out_dim * V
        return batch_size * (encoder + keys + decoder)


__all__ = ["LSTMConfig", "LSTMSeq2Seq"]
