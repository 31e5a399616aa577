"""Multi-head attention (paper section 3.2) and restricted self-attention (section 4, Table 1).

Every attention product goes through `torch.nn.functional.scaled_dot_product_attention`, so a GPU
runs it with its fused flash or memory-efficient kernels. Masks are boolean, True where a query may
attend to a key, and never a dense (len x len) matrix in the common cases: causal self-attention
uses `is_causal=True`, padding is a broadcast (batch, 1, 1, key_len) mask.

Restricted self-attention ("considering only a neighborhood of size r in the input sequence
centered around the respective output position", section 4) is computed block by block: the
sequence is cut into blocks of r positions, and each block of queries attends only to its own key
block and its neighbours, with an exact band mask inside. Its cost is O(n r d), not O(n^2 d).

Incremental decoding keeps keys and values in a `DecoderState` under names unique to each layer
(`f"{name}.k"`, `f"{name}.v"`), as (batch, heads, len, head_dim) tensors so that
`DecoderState.reorder` (an `index_select` on dim 0) serves beam search: self-attention's in
`sequences` (appended to in place, one position per step; with a window, only its last r
positions, in `cache`), cross-attention's, computed from the
encoder output alone, in `source_cache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_mt.models.dropout import dropout
from transformer_mt.models.interface import DecoderState


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    padding_mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V (equation 1) for every query over every key.

    q: (batch, heads, q_len, head_dim); k, v: (batch, heads, k_len, head_dim); padding_mask:
    (batch, k_len), True at padded keys. `causal` lets query i see keys 0..i (needs q_len == k_len).
    """
    if padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    mask = ~padding_mask[:, None, None, :]  # (batch, 1, 1, k_len), True where a key may be seen
    if causal:  # not used by the Transformer (its decoder has no key padding); here for completeness
        q_len, k_len = q.size(-2), k.size(-2)
        mask = mask & torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    padding_mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """Restricted self-attention: query i sees keys j with |i - j| <= window (causal: i - window <= j <= i).

    q, k, v: (batch, heads, n, head_dim); padding_mask: (batch, n), True at padded keys. Returns
    (batch, heads, n, head_dim), exactly what `dense_attention` returns under the band mask. A query
    whose band holds only padding (a padded position far from any word) attends to itself, so that
    no row is fully masked (which would give NaN, and NaN times a zero weight is still NaN).
    """
    batch, heads, n, head_dim = q.shape
    r = window
    if r >= n - 1:  # the band covers the whole sequence
        return dense_attention(q, k, v, padding_mask=padding_mask, causal=causal, dropout_p=dropout_p)

    blocks = -(-n // r)  # ceil(n / r) query blocks of r positions
    span = 2 if causal else 3  # key blocks seen by a query block: previous, own (and next)
    right = blocks * r - n + (0 if causal else r)  # positions padded on the right (left: r)

    q_blocks = F.pad(q, (0, 0, 0, blocks * r - n)).view(batch, heads, blocks, r, head_dim)
    # (batch, heads, blocks, span * r, head_dim): key block b covers positions (b - 1) r .. (b - 1 + span) r - 1
    k_blocks = F.pad(k, (0, 0, r, right)).unfold(2, span * r, r).transpose(-1, -2)
    v_blocks = F.pad(v, (0, 0, r, right)).unfold(2, span * r, r).transpose(-1, -2)

    is_key = q.new_ones(batch, n, dtype=torch.bool) if padding_mask is None else ~padding_mask
    is_key = F.pad(is_key, (r, right), value=False).unfold(1, span * r, r)  # (batch, blocks, span * r)

    # offset[a, c]: position of key c in the block's window minus position of query a in the block
    offset = torch.arange(span * r, device=q.device)[None, :] - r - torch.arange(r, device=q.device)[:, None]
    band = (offset >= -r) & (offset <= (0 if causal else r))  # (r, span * r)
    mask = band & (is_key[:, :, None, :] | (offset == 0))  # (batch, blocks, r, span * r)

    def fold(x: Tensor) -> Tensor:
        """(batch, heads, blocks, len, head_dim) -> (batch * blocks, heads, len, head_dim): 4-D for the fused kernels."""
        return x.transpose(1, 2).reshape(batch * blocks, heads, x.size(-2), head_dim)

    out = F.scaled_dot_product_attention(
        fold(q_blocks),
        fold(k_blocks),
        fold(v_blocks),
        attn_mask=mask.view(batch * blocks, 1, r, span * r),
        dropout_p=dropout_p,
    )  # (batch * blocks, heads, r, head_dim)
    out = (
        out.view(batch, blocks, heads, r, head_dim)
        .transpose(1, 2)
        .reshape(batch, heads, blocks * r, head_dim)
    )
    return out[:, :, :n]


def attention_probabilities(
    q: Tensor,
    k: Tensor,
    *,
    padding_mask: Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
) -> Tensor:
    """The weights softmax(Q K^T / sqrt(d_k)) of equation 1, computed explicitly (the fused kernels
    of `dense_attention` and `local_attention` never return them): (batch, heads, q_len, k_len),
    zero where a query may not look. The same masks as those functions: padded keys, `causal`, a
    `window` band; under a band that does not cover the sequence, a query whose band holds only
    padding attends to itself, as in `local_attention`.
    """
    q_len, k_len = q.size(-2), k.size(-2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))  # (batch, heads, q_len, k_len)
    offset = torch.arange(k_len, device=q.device)[None, :] - torch.arange(q_len, device=q.device)[:, None]
    allowed = offset <= 0 if causal else torch.ones_like(offset, dtype=torch.bool)  # (q_len, k_len)
    if window is not None:
        allowed = allowed & (offset >= -window) & (offset <= window)
    allowed = allowed[None, None]  # (1, 1, q_len, k_len)
    if padding_mask is not None:
        allowed = allowed & ~padding_mask[:, None, None, :]
        if window is not None and window < q_len - 1:
            allowed = allowed | (offset == 0)[None, None]
    scores = scores.float().masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=-1).type_as(q)


class MultiHeadAttention(nn.Module):
    """The projections of multi-head attention (section 3.2.2): h heads of d_model / h dimensions.

    The input projections W^Q, W^K, W^V are stored fused, as one `nn.Linear` per input they read
    (self-attention: one (3 d_model x d_model) matrix; cross-attention: W^Q, then W^K and W^V
    together for the encoder output): one wide matrix product runs faster than three narrow ones, in
    the backward pass too. Checkpoints with separate `q_proj` / `k_proj` / `v_proj` still load.
    """

    fused_from: dict[str, tuple[str, ...]] = {}  # fused projection -> the separate ones it replaced

    def __init__(self, d_model: int, heads: int, *, dropout: float = 0.0, name: str = "attn") -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.dropout = dropout
        self.name = name  # prefix of this layer's entries in a DecoderState's cache
        self.out_proj = nn.Linear(d_model, d_model)
        self.register_load_state_dict_pre_hook(_fuse_separate_projections)

    def input_projections(self) -> tuple[nn.Linear, ...]:
        """The input projections, whose rows are the (query, key, value) blocks in that order."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        # Xavier uniform on each d x d block with gain 1/sqrt(2) (fairseq's init for separate W^Q,
        # W^K, W^V: the bound of one Xavier-initialised (3d x d) matrix).
        d_model = self.out_proj.in_features
        for proj in self.input_projections():
            for block in proj.weight.data.split(d_model):
                nn.init.xavier_uniform_(block, gain=1 / math.sqrt(2))
            nn.init.zeros_(proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(batch, len, d_model) -> (batch, heads, len, head_dim)"""
        return x.view(x.size(0), x.size(1), self.heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(batch, heads, len, head_dim) -> (batch, len, d_model), through the output projection W^O."""
        return self.out_proj(x.transpose(1, 2).reshape(x.size(0), x.size(2), self.heads * self.head_dim))

    @property
    def dropout_p(self) -> float:
        return self.dropout if self.training else 0.0


class SelfAttention(MultiHeadAttention):
    """Self-attention of the encoder (all positions) or the decoder (`causal`: earlier positions only),
    optionally restricted to a neighbourhood of `window` positions on each side (causal: before)."""

    fused_from = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        dropout: float = 0.0,
        causal: bool = False,
        window: int | None = None,
        name: str = "self",
    ) -> None:
        super().__init__(d_model, heads, dropout=dropout, name=name)
        self.causal = causal
        self.window = window
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)  # [W^Q; W^K; W^V]
        self.reset_parameters()

    def input_projections(self) -> tuple[nn.Linear, ...]:
        return (self.qkv_proj,)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, state: DecoderState | None = None
    ) -> Tensor:
        """x: (batch, len, d_model); padding_mask: (batch, len), True at padding.

        With a `state`, x holds only the newest position (batch, 1, d_model) of a causal decoder; its
        key and value are appended to those cached for the earlier positions.
        """
        q, k, v = (self.split_heads(part) for part in self.qkv_proj(x).chunk(3, dim=-1))
        if state is None:
            if self.window is None:
                out = dense_attention(
                    q, k, v, padding_mask=padding_mask, causal=self.causal, dropout_p=self.dropout_p
                )
            else:
                out = local_attention(
                    q,
                    k,
                    v,
                    self.window,
                    padding_mask=padding_mask,
                    causal=self.causal,
                    dropout_p=self.dropout_p,
                )
            return self.merge_heads(out)

        if not self.causal or padding_mask is not None:
            raise ValueError("incremental self-attention is for a causal decoder without key padding")
        k_name, v_name = f"{self.name}.k", f"{self.name}.v"
        if self.window is None:  # written in place after the earlier positions (no torch.cat)
            k = state.append(k_name, k, dim=2)  # (batch, heads, steps + 1, head_dim)
            v = state.append(v_name, v, dim=2)
        else:  # the new query sees itself and the `window` positions before it: keep only those
            if k_name in state.cache:
                k = torch.cat([state.cache[k_name], k], dim=2)[:, :, -(self.window + 1) :]
                v = torch.cat([state.cache[v_name], v], dim=2)[:, :, -(self.window + 1) :]
            state.cache[k_name], state.cache[v_name] = k[:, :, -self.window :], v[:, :, -self.window :]
        return self.merge_heads(dense_attention(q, k, v, dropout_p=self.dropout_p))


    def with_weights(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`forward` over a whole sequence, with the attention weights it used:
        output (batch, len, d_model), weights (batch, heads, len, len)."""
        q, k, v = (self.split_heads(part) for part in self.qkv_proj(x).chunk(3, dim=-1))
        weights = attention_probabilities(
            q, k, padding_mask=padding_mask, causal=self.causal, window=self.window
        )
        out = torch.matmul(dropout(weights, self.dropout_p, self.training), v)
        return self.merge_heads(out), weights


class CrossAttention(MultiHeadAttention):
    """Encoder-decoder attention: decoder queries, keys and values from the encoder output (section 3.2.3)."""

    fused_from = {"kv_proj": ("k_proj", "v_proj")}

    def __init__(self, d_model: int, heads: int, *, dropout: float = 0.0, name: str = "cross") -> None:
        super().__init__(d_model, heads, dropout=dropout, name=name)
        self.q_proj = nn.Linear(d_model, d_model)  # W^Q, on the decoder states
        self.kv_proj = nn.Linear(d_model, 2 * d_model)  # [W^K; W^V], on the encoder output
        self.reset_parameters()

    def input_projections(self) -> tuple[nn.Linear, ...]:
        return (self.q_proj, self.kv_proj)

    def forward(
        self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor, state: DecoderState | None = None
    ) -> Tensor:
        """x: (batch, tgt_len, d_model); memory: (batch, src_len, d_model); memory_padding_mask:
        (batch, src_len), True at padding. With a `state`, the memory's keys and values are projected
        on the first step and read from the cache afterwards.

        With a state whose `rows_per_source` g > 1 (beam search), each block of g rows shares one
        source sentence: its keys and values are projected and kept once, and the block's g queries
        attend to them together, as g query positions of one sequence (cross-attention has no causal
        order), which reads each source's keys once per step instead of g times.
        """
        q = self.split_heads(self.q_proj(x))  # (batch, heads, tgt_len, head_dim)
        group = 1 if state is None else state.rows_per_source
        if group > 1:  # one copy of each source: (batch / g, src_len, ...)
            memory, memory_padding_mask = memory[::group], memory_padding_mask[::group]
        k_name, v_name = f"{self.name}.k", f"{self.name}.v"
        if state is not None and k_name in state.source_cache:
            k, v = state.source_cache[k_name], state.source_cache[v_name]
        else:
            k, v = (self.split_heads(part) for part in self.kv_proj(memory).chunk(2, dim=-1))
            if state is not None:
                state.source_cache[k_name], state.source_cache[v_name] = k, v
        if group == 1:
            out = dense_attention(q, k, v, padding_mask=memory_padding_mask, dropout_p=self.dropout_p)
            return self.merge_heads(out)
        batch, heads, length, head_dim = q.shape
        q = q.view(batch // group, group, heads, length, head_dim).transpose(1, 2)
        q = q.reshape(batch // group, heads, group * length, head_dim)  # a block's queries together
        out = dense_attention(q, k, v, padding_mask=memory_padding_mask, dropout_p=self.dropout_p)
        out = out.view(batch // group, heads, group, length, head_dim).transpose(1, 2)
        return self.merge_heads(out.reshape(batch, heads, length, head_dim))


    def with_weights(self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` without a cache, with the attention weights it used:
        output (batch, tgt_len, d_model), weights (batch, heads, tgt_len, src_len)."""
        q = self.split_heads(self.q_proj(x))
        k, v = (self.split_heads(part) for part in self.kv_proj(memory).chunk(2, dim=-1))
        weights = attention_probabilities(q, k, padding_mask=memory_padding_mask)
        out = torch.matmul(dropout(weights, self.dropout_p, self.training), v)
        return self.merge_heads(out), weights


def _fuse_separate_projections(module: MultiHeadAttention, state_dict: dict, prefix: str, *args) -> None:
    """Load-time hook: a checkpoint saved before the projections were fused holds `q_proj`,
    `k_proj` and `v_proj` apart; concatenate them, in place, into the module's fused layout."""
    for fused, separate in module.fused_from.items():
        for param in ("weight", "bias"):
            keys = [f"{prefix}{name}.{param}" for name in separate]
            if all(key in state_dict for key in keys):
                state_dict[f"{prefix}{fused}.{param}"] = torch.cat([state_dict.pop(key) for key in keys])


__all__ = [
    "attention_probabilities",
    "dense_attention",
    "local_attention",
    "MultiHeadAttention",
    "SelfAttention",
    "CrossAttention",
]
