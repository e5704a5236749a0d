"""The model runner: owns the paged KV cache tensors, runs one packed forward pass per step, and samples
the next token of each sequence whose chunk completes it (`run`).

It hooks transformers models through the attention interface: the model is switched to the
"ozwell_paged" implementation, for which transformers builds no mask, and every attention layer
calls `paged_attention` (step_layout.py) with its new keys and values. The step's layout (which packed
token belongs to which sequence, where its KV goes, which slots each sequence reads) is set by the
runner for the duration of the forward pass. Every scheduled token of every sequence is packed into one
row, with its own position id, so prefill chunks and decodes share the pass.
"""

from __future__ import annotations

import logging
import math
import types
from dataclasses import dataclass, field

import torch

from engines.native import cpu_fused, cpu_kernel, kv_cache, step_layout
from engines.native.cpu_linears import pack_cpu_linears
from engines.native.grammar import mask_logits
from engines.native.prompt_logprobs import PromptRows, prompt_rows, record
from engines.native.sampler import SamplingBatch, sample
from engines.native.scheduler import ScheduledChunk
from engines.native.sequence import Sequence
from engines.native.static_decode import Capturer, StaticDecode, StaticLayout
from engines.native.step_layout import StepLayout, decode_state, paged_attention
from engines.native.vision import image_groups
from engines.protocol import TokenLogprobs

ATTENTION_NAME = "ozwell_paged"
CPU_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class StepOutput:
    """What a step sampled: a token (and its logprobs, when asked) per sequence, and the sequences whose
    own sampling raised, with the error (their requests fail alone)."""

    sequences: list[Sequence] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    failed: list[tuple[Sequence, Exception]] = field(default_factory=list)


def _sample(sequences: list[Sequence], logits: torch.Tensor) -> StepOutput:
    params = [s.params for s in sequences]
    batch = SamplingBatch(params, [s.token_ids[:s.num_prompt_tokens] for s in sequences], logits.shape[-1],
                          logits.device, outputs=[s.token_ids[s.num_prompt_tokens:] for s in sequences])
    next_ids, chosen, top_values, top_ids = sample(logits, batch, [s.generator for s in sequences])
    token_ids = next_ids.tolist()  # the step's one host sync (logprobs ride along when asked)
    return StepOutput(list(sequences), token_ids,
                      logprobs_per_row(chosen, top_values, top_ids, [p.logprobs for p in params]))


def sample_isolated(sequences: list[Sequence], logits: torch.Tensor) -> StepOutput:
    """Sample the batch; if that raises, sample row by row and report the rows that raise.

    Sampling is a pure function of one row's logits and parameters, so a row that fails alone is its
    request's fault: the engine fails that request, its batch-mates go on, and the engine's fault count
    is not touched. A broken device shows up in the next forward pass, which does count."""
    try:
        return _sample(sequences, logits)
    except Exception as exc:  # noqa: BLE001 - find the rows that caused it
        log.warning("sampling a batch of %d failed (%r); sampling row by row", len(sequences), exc)
    result = StepOutput()
    for row, sequence in enumerate(sequences):
        try:
            one = _sample([sequence], logits[row:row + 1])
        except Exception as exc:  # noqa: BLE001 - this row's own fault
            result.failed.append((sequence, exc))
            continue
        result.sequences.append(sequence)
        result.token_ids += one.token_ids
        result.logprobs += one.logprobs
    return result


def logprobs_per_row(chosen, top_values, top_ids, ks: list[int | None]) -> list[TokenLogprobs | None]:
    if chosen is None:
        return [None] * len(ks)
    chosen = chosen.tolist()
    top = (top_values.tolist(), top_ids.tolist()) if top_values is not None else None
    rows = []
    for row, k in enumerate(ks):
        if k is None:
            rows.append(None)
        else:
            # (under a grammar, tokens it forbids have no probability: they are not alternatives)
            pairs = [(t, v) for t, v in zip(top[1][row][:k], top[0][row][:k]) if v != -math.inf] if (k and top) else []
            rows.append(TokenLogprobs(chosen[row], pairs))
    return rows
log = logging.getLogger("ozwell.engines")
def _tall_head_forward(self, hidden: torch.Tensor) -> torch.Tensor:
    """Where oneDNN cannot pack the linears: the LM head as weight @ hidden^T, one tall GEMM. On a
    CPU this ran 2x faster than hidden @ weight^T for 8-64 rows against Gemma's 262k x 640 head
    (fp32, 2-core AVX2: 99 against 212 ms at 8 rows, 224 against 361 at 32)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return (self.weight @ flat.t()).t().contiguous().reshape(*hidden.shape[:-1], -1)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention)


class PagedModelRunner:
    """`num_blocks` blocks for the block manager, plus one scratch block past them that no sequence owns
    (the padding rows of a static decode step write there). With `static_decode`, decode-only steps run on
    persistent buffers (static_decode.py), through the Triton kernel when `kernel`; `capture_graphs` then
    captures them. The cache holds K/V in `kv_dtype` (default: the model's; kv_cache.py), int8 with per-token scales."""

    def __init__(self, model, num_blocks: int, block_size: int, *, max_num_seqs: int = 1, max_model_len: int = 0,
                 static_decode: bool = False, kernel: bool = False, kv_dtype: torch.dtype | None = None):
        _register()
        model.set_attn_implementation(ATTENTION_NAME)
        config = model.config.get_text_config()
        self.model = model
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.device = next(model.parameters()).device
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # the manager's blocks, and the scratch block past them
        shape = (config.num_hidden_layers, (num_blocks + 1) * block_size, config.num_key_value_heads, head_dim)
        dtype = next(model.parameters()).dtype
        # on a CPU, the decoder layers of a known architecture run fused (cpu_fused.py: their elementwise work in
        # C++ ops, their fp32 linears in a layout for few rows); oneDNN packs the linears left
        on_cpu = self.device.type == "cpu" and dtype in CPU_KERNEL_DTYPES
        self.fused_layers = cpu_fused.install(model, paged_attention, decode_state) if on_cpu else 0
        # a step of decodes only that the CPU kernels serve skips transformers' model-level Python (cpu_fused.py)
        self.decode_forward = cpu_fused.decode_forward(model) if self.fused_layers else None
        # a bfloat16 model's logits, widened for the sampler on the C++ ops' threads into a buffer kept between steps
        # (csrc/fused_cpu.cpp, to_float_out: a new float32 tensor cost 11-12 ms a step at 32 rows of Gemma's vocabulary)
        ops = cpu_kernel.fused_ops() if on_cpu and dtype == torch.bfloat16 else None
        self._to_float_out = ops.to_float_out if ops is not None else None
        self._float_logits = torch.empty(0)
        if self.device.type == "cpu" and not pack_cpu_linears(model):
            head = model.get_output_embeddings()
            if type(head) is torch.nn.Linear and head.bias is None and getattr(head, "blocked_weight", None) is None:
                head.forward = types.MethodType(_tall_head_forward, head)
        # on a CPU, decode attention reads the cache in place through the C++ kernel where it builds
        self.cpu_kernel = cpu_kernel.load() if on_cpu else None
        self.kv_dtype = kv_dtype or dtype
        # on a CPU in fresh pages that cost memory once used (cpu_kernel.py); int8 with its scales beside
        self.k_cache, self.v_cache, self.k_scales, self.v_scales = kv_cache.allocate(
            shape, self.kv_dtype, self.device, cpu_kernel.fresh_zeros if self.device.type == "cpu" else None)
        self.vision = None  # a VLM's image side (vision.py), set by the engine
        self.static = None
        if static_decode and self.k_scales is not None:  # (CPU tests only: int8 is refused on a GPU)
            log.info("an int8 KV cache serves eager decode steps (the static ones read no scales)")
        elif static_decode:  # the Triton kernel reads K/V in the query's dtype; else the torch path widens them
            self.static = StaticDecode(self.k_cache, self.v_cache, block_size, max_num_seqs,
                                       -(-max_model_len // block_size), num_blocks, kernel and self.kv_dtype == dtype,
                                       self._static_forward)

    def capture_graphs(self, capturer: Capturer) -> None:
        if self.static is not None:
            self.static.capture(capturer)

    def _static_forward(self, layout: StaticLayout, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        step_layout.active.layout = layout
        try:
            with torch.inference_mode():
                output = self.model(input_ids=input_ids, position_ids=positions, use_cache=False, logits_to_keep=0)
            return output.logits[0]
        finally:
            step_layout.active.layout = None

    def _slots(self, block_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cache slots of token positions: block id x block size + offset in the block."""
        return block_table[positions // self.block_size] * self.block_size + positions % self.block_size

    def run(self, chunks: list[ScheduledChunk]) -> StepOutput:
        """One step: the packed forward pass, then a token for each sequence whose chunk completes it. A VLM's images
        get their features first; a request whose image fails there fails alone (its chunk is left out)."""
        failed = []
        if self.vision is not None:
            chunks, failed = self.vision.ready(chunks)
            if not chunks:
                return StepOutput(failed=failed)
        static = self.static is not None and self.static.fits(chunks) and not any(
            chunk.seq.needs_prompt_logprobs or _before_an_image_end(chunk.seq) for chunk in chunks)
        logits = self.static.forward(chunks) if static else self.forward(chunks)
        completing = [chunk.seq for chunk in chunks if chunk.completes]
        if self._to_float_out is not None and completing:
            logits = self._widen(logits)
        if any(seq.grammar is not None for seq in completing):
            mask_logits(logits, [seq.grammar for seq in completing])
        out = sample_isolated(completing, logits) if completing else StepOutput()
        out.failed += failed
        return out

    def _widen(self, logits: torch.Tensor) -> torch.Tensor:
        """bfloat16 logits [rows, vocab] in float32, in the kept buffer (valid until the next step's)."""
        rows, vocab = logits.shape
        if self._float_logits.shape[0] < rows or self._float_logits.shape[1] != vocab:
            self._float_logits = cpu_kernel.zeros_in_huge_pages((max(rows, self.max_num_seqs), vocab), torch.float32)
        return self._to_float_out(logits, self._float_logits[:rows])

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Compute the chunks' tokens; return the logits of each chunk that completes its sequence,
        in the chunks' order ([completing, vocab]). The prompt positions a sequence asks logprobs of are
        scored on the way (prompt_logprobs.py)."""
        tokens, ranges, context_slots, query_positions, keep, positions = [], [], [], [], [], []
        scored: list[PromptRows] = []
        scored_keep: list[int] = []
        decode_rows, decode_tables, decode_lengths, decode_slots = [], [], [], []
        pieces, groups = [], []  # images: per chunk (vision.Vision.embed); per prefill, bidirectional image groups
        size = self.block_size
        for chunk in chunks:
            seq, start = chunk.seq, chunk.seq.num_computed_tokens
            end = start + chunk.num_tokens
            offset = len(tokens)
            tokens += seq.token_ids[start:end]
            if seq.images is not None:
                pieces.append((seq.images, start, end, offset))
            positions += range(start, end)
            if chunk.completes:
                keep.append(offset + chunk.num_tokens - 1)
            rows = prompt_rows(seq, start, end)
            if rows is not None:
                scored.append(rows)
                scored_keep += range(offset + rows.first - start, offset + rows.first - start + rows.count)
            if chunk.num_tokens == 1 and start > 0:  # a decode: attended in the batch
                decode_rows.append(offset)
                decode_tables.append(seq.block_table)
                decode_lengths.append(end)
                decode_slots.append(seq.block_table[start // size] * size + start % size)
                continue
            ranges.append((offset, offset + chunk.num_tokens))
            # the slots of every position up to `end`; the new tokens' are its tail
            context_slots.append(self._slots(torch.tensor(seq.block_table, device=self.device),
                                             torch.arange(end, device=self.device)))
            query_positions.append(torch.arange(start, end, device=self.device))
            groups.append(image_groups(seq.images, end))
        positions = torch.tensor(positions, device=self.device)
        layout = StepLayout(self.k_cache, self.v_cache, torch.empty(0), ranges, context_slots, query_positions,
                            k_scales=self.k_scales, v_scales=self.v_scales,
                            image_groups=groups if any(g is not None for g in groups) else None)
        # a chunk over an image's placeholders: the step runs on embeddings, the image's rows its features
        embeds = self.vision.embed(pieces, tokens) if pieces and self.vision is not None else None
        if decode_rows:
            self._decode_layout(layout, decode_rows, decode_tables, decode_lengths)
        if not ranges:  # decodes only (the rows are 0..n-1, in order)
            slot_mapping = torch.tensor(decode_slots, device=self.device)
            layout.all_decode = True
        else:
            slot_mapping = torch.empty(len(tokens), dtype=torch.long, device=self.device)
            for (start, end), slots, pos in zip(ranges, context_slots, query_positions):
                slot_mapping[start:end] = slots[pos[0]:]
            if decode_rows:
                slot_mapping[layout.decode_rows] = torch.tensor(decode_slots, device=self.device)
        layout.slot_mapping = slot_mapping
        step_layout.active.layout = layout
        try:
            with torch.inference_mode():
                every = len(keep) == len(tokens) and not scored
                if self.decode_forward is not None and every and layout.whole_layers and embeds is None:
                    return self.decode_forward(torch.tensor([tokens], device=self.device), positions[None])
                output = self.model(
                    **({"inputs_embeds": embeds} if embeds is not None else
                       {"input_ids": torch.tensor([tokens], device=self.device)}),
                    position_ids=positions[None],
                    use_cache=False,
                    # every token's logits (decodes only, all completing): no gather of the hidden states
                    logits_to_keep=0 if every else torch.tensor(keep + scored_keep or [0], device=self.device),
                )
        finally:
            step_layout.active.layout = None
        if scored:
            record(output.logits[0, len(keep):], scored)
        return output.logits[0, : len(keep)]

    def _decode_layout(self, layout: StepLayout, rows: list[int], tables: list[list[int]],
                       lengths: list[int]) -> None:
        """Block tables of the decoding sequences, padded to the longest: [decoding, most blocks]."""
        width = -(-max(lengths) // self.block_size)
        table = [blocks[:width] + [0] * (width - len(blocks[:width])) for blocks in tables]  # one tensor, built once
        layout.decode_rows = torch.tensor(rows, device=self.device)
        layout.decode_tables = torch.tensor(table, dtype=torch.long, device=self.device)
        layout.decode_lengths = torch.tensor(lengths, device=self.device)
        layout.block_size = self.block_size
        layout.kernel = self.cpu_kernel


def _before_an_image_end(seq: Sequence) -> bool:
    """Whether the sequence has not yet computed all its images' placeholders (its rows may be an image's)."""
    return seq.images is not None and seq.num_computed_tokens < seq.images.spans[-1].end


def profile_activations(model, num_tokens: int, block_size: int) -> int:
    """CUDA only: the peak bytes one packed eager step of `num_tokens` prompt tokens (the largest step the
    scheduler makes) allocates beyond what is allocated before it, on a throwaway cache of its own size."""
    blocks = -(-num_tokens // block_size)
    runner = PagedModelRunner(model, blocks, block_size)
    sequence = Sequence("profile", [0] * num_tokens, block_size)
    sequence.block_table = list(range(blocks))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    runner.forward([ScheduledChunk(sequence, num_tokens)])
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del runner
    torch.cuda.empty_cache()
    return peak
