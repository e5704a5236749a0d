"""Decode steps on persistent buffers, so that they can be replayed as CUDA graphs.

A step whose chunks are all decodes (one new token per sequence) and that fits the largest bucket runs here;
any step that carries a prefill chunk runs the runner's eager packed path (model_runner.py), as vLLM and
nano-vllm also do. The step's inputs live in persistent buffers sized for the largest bucket:

    token ids, positions, slot mapping, context lengths   [4, max bucket]
    block tables                                          [max bucket, most blocks a sequence can have]

They are filled on the host (pinned memory, on CUDA) and copied to the device in two non-blocking copies.
A step pads its batch to the next bucket (1, 2, 4, 8, 16, 24, 32, then steps of 16 up to max_num_seqs);
a padding row reads and writes only the scratch block, one block past the end of the cache
that the block manager never hands out. Attention reads K/V through the block tables in place: the Triton
kernel (triton_attention.py) where there is CUDA, else a static-shaped torch reference (the CPU tests).

With a capturer (on CUDA: `cuda_graph_capturer`), each bucket's forward pass is captured once at load and
replayed after; then `self_check` compares a replay, and the kernel, with the eager torch path on the same
inputs, and a mismatch or an exception turns the whole static path off (the runner serves eagerly).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engines.native.paged_attention import paged_decode

log = logging.getLogger("ozwell.engines")

Replay = Callable[[], torch.Tensor]
Capturer = Callable[[Callable[[], torch.Tensor]], Replay]  # a bucket's eager forward -> its replay


def decode_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes a decode step is padded to: 1, 2, 4, 8, 16, 24, 32, then steps of 16, up to max_num_seqs."""
    sizes = [1, 2, 4, 8, 16, 24, 32]
    while sizes[-1] < max_num_seqs:
        sizes.append(sizes[-1] + 16)
    return [s for s in sizes if s < max_num_seqs] + [max_num_seqs]


@dataclass
class StaticLayout:
    """The attention layout of a static decode step: views of the persistent buffers, `bucket` rows."""

    k_cache: torch.Tensor  # [layers, slots, kv_heads, dim]
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor  # [bucket]
    tables: torch.Tensor  # [bucket, max blocks]
    lengths: torch.Tensor  # [bucket]
    block_size: int
    kernel: bool  # the Triton kernel, else the torch reference

    def attend(self, module, query, key, value, scaling, sliding_window):
        layer = module.layer_idx
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
        k_cache.index_copy_(0, self.slot_mapping, key[0].transpose(0, 1).to(k_cache.dtype))
        v_cache.index_copy_(0, self.slot_mapping, value[0].transpose(0, 1).to(v_cache.dtype))
        queries = query[0].transpose(0, 1)  # [bucket, heads, dim]
        if self.kernel:
            from engines.native.triton_attention import paged_decode_attention

            out = paged_decode_attention(queries, k_cache, v_cache, self.tables, self.lengths, self.block_size,
                                         scaling if scaling is not None else query.shape[-1] ** -0.5,
                                         sliding_window)
        else:
            out = paged_decode(queries, k_cache, v_cache, self.tables, self.lengths, self.block_size, scaling,
                               sliding_window)
        return out[None], None  # [1, bucket, heads, dim]


class StaticDecode:
    """Decode steps on persistent buffers; optionally replayed as captured graphs, one a bucket."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, block_size: int, max_num_seqs: int,
                 max_blocks: int, scratch_block: int, kernel: bool, forward: Callable):
        self.k_cache, self.v_cache = k_cache, v_cache
        self.block_size = block_size
        self.buckets = decode_buckets(max_num_seqs)
        self.max_blocks = max_blocks
        self.scratch_block = scratch_block
        self.kernel = kernel
        self._forward = forward  # (layout, input_ids [1, n], positions [1, n]) -> logits [n, vocab]
        self.device = k_cache.device
        self.enabled = True
        self.graphs: dict[int, Replay] = {}
        self.steps = 0  # decode steps run here (replayed or eager)
        rows = self.buckets[-1]
        pinned = self.device.type == "cuda"
        # ids | positions | slots | lengths as one [4, rows] int64 buffer (copied whole: a few KiB), and the
        # block tables as [rows, max blocks] int32 (copied for the bucket's rows only). The host side is
        # filled through numpy views, which cost far less a row than torch indexing.
        self.host_meta = torch.zeros(4, rows, dtype=torch.long, pin_memory=pinned)
        self.host_tables = torch.zeros(rows, max_blocks, dtype=torch.int32, pin_memory=pinned)
        self._meta, self._tables = self.host_meta.numpy(), self.host_tables.numpy()
        self.meta = torch.zeros(4, rows, dtype=torch.long, device=self.device)
        self.tables = torch.zeros(rows, max_blocks, dtype=torch.int32, device=self.device)
        self.token_ids, self.positions, self.slots, self.lengths = self.meta

    def bucket(self, rows: int) -> int | None:
        return next((b for b in self.buckets if b >= rows), None)

    def fits(self, chunks) -> bool:
        return (self.enabled and len(chunks) <= self.buckets[-1]
                and all(c.num_tokens == 1 and c.seq.num_computed_tokens > 0 for c in chunks))

    def load(self, rows: list[tuple[int, int, list[int]]]) -> int:
        """Fill the buffers with (token id, position, block table) rows, padded to their bucket, and copy
        them to the device (non-blocking from pinned memory on a GPU). Returns the bucket.

        Table entries past a row's context are never read, so they are left as they were."""
        bucket = self.bucket(len(rows))
        size, meta, tables = self.block_size, self._meta, self._tables
        for row, (token, position, table) in enumerate(rows):
            meta[:, row] = (token, position, table[position // size] * size + position % size, position + 1)
            tables[row, :len(table)] = table[:self.max_blocks]
        if bucket > len(rows):  # padding rows: token 0 at position 0 in the scratch block, a context of 1
            meta[:, len(rows):bucket] = [[0], [0], [self.scratch_block * size], [1]]
            tables[len(rows):bucket, 0] = self.scratch_block
        self.meta.copy_(self.host_meta, non_blocking=True)
        self.tables[:bucket].copy_(self.host_tables[:bucket], non_blocking=True)
        return bucket

    def layout(self, bucket: int, kernel: bool | None = None) -> StaticLayout:
        return StaticLayout(self.k_cache, self.v_cache, self.slots[:bucket], self.tables[:bucket],
                            self.lengths[:bucket], self.block_size, self.kernel if kernel is None else kernel)

    def eager(self, bucket: int, kernel: bool | None = None) -> torch.Tensor:
        """The bucket's forward pass over the buffers as they are: logits [bucket, vocab]."""
        return self._forward(self.layout(bucket, kernel), self.token_ids[:bucket][None], self.positions[:bucket][None])

    def forward(self, chunks) -> torch.Tensor:
        """Logits [len(chunks), vocab] of a decode step (fits() must hold)."""
        bucket = self.load([(c.seq.token_ids[c.seq.num_computed_tokens], c.seq.num_computed_tokens,
                             c.seq.block_table) for c in chunks])
        replay = self.graphs.get(bucket)
        self.steps += 1
        logits = replay() if replay is not None else self.eager(bucket)
        return logits[:len(chunks)]

    # ---- capture and the self-check ------------------------------------------------------------
    def capture(self, capturer: Capturer) -> None:
        """Capture every bucket, largest first (the smaller ones reuse its memory pool), then check them.
        Any failure turns the static path off, logged with its reason."""
        started = time.perf_counter()
        try:
            self._sample_inputs(self.buckets[-1])
            for i, bucket in enumerate(reversed(self.buckets)):
                self.graphs[bucket] = capturer(lambda bucket=bucket: self.eager(bucket))
                if i % 4 == 0 or bucket == 1:
                    log.info("capturing decode graphs: %d/%d (batch %d)", i + 1, len(self.buckets), bucket)
            problem = self.self_check()
        except Exception as exc:  # noqa: BLE001 - any failure here means: serve eagerly
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            self.k_cache.zero_()
            self.v_cache.zero_()
        if problem is not None:
            self.disable(f"CUDA graphs failed their check ({problem})")
            return
        log.info("captured %d decode graphs (batch 1-%d) in %.1f s", len(self.graphs), self.buckets[-1],
                 time.perf_counter() - started)

    def disable(self, reason: str) -> None:
        log.warning("%s; serving eager steps instead", reason)
        self.graphs.clear()
        self.enabled = False

    def self_check(self, tolerance: float = 2e-2) -> str | None:
        """Replays and the kernel against the eager torch path on the same inputs: None, or what differs."""
        for bucket in sorted({self.buckets[0], self.buckets[len(self.buckets) // 2], self.buckets[-1]}):
            self._sample_inputs(bucket)
            reference = self.eager(bucket, kernel=False).float()
            candidates = {"the paged attention kernel": self.eager(bucket).float()} if self.kernel else {}
            if bucket in self.graphs:
                candidates["the graph replay"] = self.graphs[bucket]().float()
            scale = reference.abs().max().item() or 1.0
            for name, logits in candidates.items():
                error = (logits - reference).abs().max().item() / scale
                if not error <= tolerance:  # (nan fails too)
                    return f"{name} differs from the eager step at batch {bucket}: relative error {error:.3g}"
        return None

    def _sample_inputs(self, bucket: int) -> None:
        """Random K/V and a batch of ragged contexts over real blocks (no sequence owns any at load)."""
        generator = torch.Generator().manual_seed(0)
        for cache in (self.k_cache, self.v_cache):
            cache.copy_(torch.randn(cache.shape, generator=generator).to(cache.dtype))
        capacity = min(self.max_blocks, self.scratch_block // max(bucket, 1))
        rows = []
        for row in range(bucket):
            blocks = 1 + row % max(capacity, 1)
            table = [row * capacity + b for b in range(blocks)] if capacity else [self.scratch_block]
            position = int(torch.randint(0, blocks * self.block_size, (1,), generator=generator))
            rows.append((int(torch.randint(0, 100, (1,), generator=generator)), position, table))
        self.load(rows)


def cuda_graph_capturer() -> Capturer:
    """Capture a bucket's forward pass as a CUDA graph (warmed up on a side stream first, all graphs sharing
    one memory pool); its replay returns the graph's static output."""
    pool = None

    def capture(forward: Callable[[], torch.Tensor]) -> Replay:
        nonlocal pool
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            output = forward()
        pool = graph.pool()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay

    return capture
