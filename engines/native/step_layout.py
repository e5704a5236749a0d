"""The layout of one packed eager step, and the attention hook that reads it.

The runner (model_runner.py) packs every scheduled token of every sequence into one row and sets a `StepLayout` on
`active` for the duration of the forward pass; every attention layer of the model calls `paged_attention`, which
writes the layer's new keys and values into the paged cache and attends: the decoding sequences together, from the
cache in place (the CPU kernel, or paged_attention.py's blocks), each prefilling sequence on its own. The fused CPU
layers ask `decode_state` whether the step lets them run whole (cpu_fused.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engines.native import kv_cache
from engines.native.paged_attention import DecodeBlocks, attend_blocks, decode_blocks

active = threading.local()  # .layout: the layout of the forward pass running on this thread


@dataclass
class StepLayout:
    """Where the step's tokens are. Sequences that decode one token are attended together, block by
    block from the paged cache (paged_attention.py); a sequence that prefills a chunk is attended on
    its own."""

    k_cache: torch.Tensor  # [layers, slots, kv_heads, head_dim], in the model's dtype, bfloat16 or int8 (kv_cache.py)
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor  # [tokens]: where each packed token's K/V goes
    query_ranges: list[tuple[int, int]]  # per prefilling sequence: its tokens in the packed row
    context_slots: list[torch.Tensor]  # per prefilling sequence: the slots of positions 0..context-1
    query_positions: list[torch.Tensor]  # per prefilling sequence: the positions of its new tokens
    decode_rows: torch.Tensor | None = None  # [decoding]: each decoding sequence's token in the packed row
    decode_tables: torch.Tensor | None = None  # [decoding, most blocks], padded with block 0
    decode_lengths: torch.Tensor | None = None  # [decoding]: context length, the new token included
    block_size: int = 0
    kernel: object = None  # the CPU decode-attention kernel (cpu_kernel.py), when it serves this step
    all_decode: bool = False  # every packed token is a decode (decode_rows is 0..n-1): the step's common case
    k_scales: torch.Tensor | None = None  # an int8 cache's scales [layers, slots, kv_heads] (float32), else None
    v_scales: torch.Tensor | None = None
    # per prefilling sequence, for a model whose image tokens attend both ways (vision.py): each context position's
    # image or -1 (vision.image_groups); None for the others
    image_groups: list[torch.Tensor | None] | None = None
    _masks: dict = field(default_factory=dict)

    def mask(self, index: int, sliding_window: int | None) -> torch.Tensor:
        """Prefilling sequence `index`'s [new tokens, context] mask: causal (and both ways among one image's tokens,
        where the model's images attend so), and windowed on sliding layers.

        The same for every layer of a kind, so it is built once a step, not once a layer."""
        key = (index, sliding_window)
        if key not in self._masks:
            positions = self.query_positions[index]
            context = torch.arange(self.context_slots[index].shape[0], device=positions.device)
            allowed = context[None, :] <= positions[:, None]
            groups = self.image_groups[index] if self.image_groups is not None else None
            if groups is not None:
                groups = groups.to(positions.device)
                mine = groups[positions][:, None]
                allowed |= (mine >= 0) & (groups[None, :] == mine)
            if sliding_window is not None:
                allowed &= context[None, :] > positions[:, None] - sliding_window
            self._masks[key] = allowed[None, None]
        return self._masks[key]

    def decode_view(self, sliding_window: int | None) -> DecodeBlocks:
        """The decoding sequences' visible blocks and mask (paged_attention.py), once a step per window."""
        key = ("decode", sliding_window)
        if key not in self._masks:
            self._masks[key] = decode_blocks(self.decode_tables, self.decode_lengths, self.block_size,
                                             sliding_window, torch.float32)
        return self._masks[key]

    def decode_starts(self, sliding_window: int | None) -> torch.Tensor:
        """The first position each decoding sequence sees: 0, or where its window opens."""
        key = ("starts", sliding_window)
        if key not in self._masks:
            zero = torch.zeros_like(self.decode_lengths)
            self._masks[key] = zero if sliding_window is None else (self.decode_lengths - sliding_window).clamp(min=0)
        return self._masks[key]

    @property
    def whole_layers(self) -> bool:
        """Whether the fused layers can run whole (`decode_layer`, cpu_fused.py): decodes only, the kernel serving."""
        return self.all_decode and self.kernel is not None

    def decode_state(self, sliding_window: int | None) -> tuple | None:
        """What the whole-layer decode op takes after the layer's index (cpu_fused.py), for layers with this window:
        in a step of decodes only that the attention kernel serves, the caches, the slots, block tables, starts,
        lengths and block size (and an int8 cache's scales); else None."""
        if not self.whole_layers:
            return None
        key = ("state", sliding_window)
        if key not in self._masks:
            scales = (self.k_scales, self.v_scales) if self.k_scales is not None else ()
            self._masks[key] = (self.k_cache, self.v_cache, self.slot_mapping, self.decode_tables,
                                self.decode_starts(sliding_window), self.decode_lengths, self.block_size, *scales)
        return self._masks[key]

    def attend(self, module, query, key, value, scaling, sliding_window):
        layer = module.layer_idx
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
        k_scales, v_scales = (None, None) if self.k_scales is None else (self.k_scales[layer], self.v_scales[layer])
        kv_cache.write(k_cache, k_scales, self.slot_mapping, key[0].transpose(0, 1))
        kv_cache.write(v_cache, v_scales, self.slot_mapping, value[0].transpose(0, 1))
        scales = (k_scales, v_scales)
        if self.all_decode:  # every token is a decode, in order: no gather of the queries, no scatter of the output
            queries = query[0].transpose(0, 1)  # [decoding, heads, dim]
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            if self.kernel is not None:
                out = self.kernel(queries.contiguous(), k_cache, v_cache, self.decode_tables,
                                  self.decode_starts(sliding_window), self.decode_lengths, self.block_size, scale,
                                  *scales)
            else:
                out = attend_blocks(queries, k_cache, v_cache, self.decode_view(sliding_window), self.block_size,
                                    scale, *scales)
            return out[None], None
        out = torch.empty(query.shape[2], query.shape[1], query.shape[3], dtype=query.dtype, device=query.device)
        if self.decode_rows is not None:
            rows = self.decode_rows
            queries = query[0][:, rows].transpose(0, 1)  # [decoding, heads, dim]
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            if self.kernel is not None:
                out[rows] = self.kernel(queries.contiguous(), k_cache, v_cache, self.decode_tables,
                                        self.decode_starts(sliding_window), self.decode_lengths, self.block_size,
                                        scale, *scales)
            else:
                out[rows] = attend_blocks(queries, k_cache, v_cache, self.decode_view(sliding_window),
                                          self.block_size, scale, *scales)
        for index, ((start, end), slots) in enumerate(zip(self.query_ranges, self.context_slots)):
            # the context gathered (and widened, or dequantised, to the query's dtype): [kv_heads, context, dim]
            keys = kv_cache.gather(k_cache, k_scales, slots, query.dtype).transpose(0, 1)
            values = kv_cache.gather(v_cache, v_scales, slots, query.dtype).transpose(0, 1)
            result = F.scaled_dot_product_attention(query[:, :, start:end], keys[None], values[None],
                                                    attn_mask=self.mask(index, sliding_window), scale=scaling,
                                                    enable_gqa=True)
            out[start:end] = result[0].transpose(0, 1)
        return out[None], None


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                    **kwargs):
    """query [1, heads, tokens, dim], key/value [1, kv_heads, tokens, dim] -> ([1, tokens, heads, dim], None):
    the step's layout (a packed eager step, or a static decode step) writes the new K/V and attends."""
    return active.layout.attend(module, query, key, value, scaling, sliding_window)


def decode_state(attn) -> tuple | None:
    """The eager step's `StepLayout.decode_state` for an attention module (None in a static decode step)."""
    layout = getattr(active, "layout", None)
    if not isinstance(layout, StepLayout):
        return None
    return layout.decode_state(getattr(attn, "sliding_window", None))
