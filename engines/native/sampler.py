"""Choosing the next tokens from logits: batched, on the model's device, one row per sequence.

The order follows vLLM's: repetition / presence / frequency penalties, logit bias, then greedy, or
temperature, min_p, top_k and top_p, and a draw. Log-probabilities are taken from the raw logits
(before any of that), as vLLM's default and OpenAI's report them. Rows may carry different params.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from engines.protocol import SamplingParams


class SamplingBatch:
    """Per-row parameters as device tensors, and per-row token counts for the penalties."""

    def __init__(self, params: Sequence[SamplingParams], prompts: Sequence[Sequence[int]], vocab_size: int,
                 device: torch.device, outputs: Sequence[Sequence[int]] | None = None):
        rows = len(params)
        self.params = list(params)
        self.device = device

        self.all_greedy = all(p.greedy for p in params)
        self.uses_penalties = any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                                  for p in params)
        # The per-row numbers go to the device in one copy (from pinned memory on a GPU, not waited for),
        # and only when a row needs them: an all-greedy batch without penalties reads none.
        if not self.all_greedy or self.uses_penalties:
            floats = torch.tensor([[p.temperature if p.temperature > 0 else 1.0, p.top_p, p.min_p, p.presence_penalty,
                                    p.frequency_penalty, p.repetition_penalty, float(p.greedy)] for p in params],
                                  dtype=torch.float32)
            top_k = torch.tensor([[p.top_k if p.top_k > 0 else vocab_size] for p in params], dtype=torch.long)
            if device.type == "cuda":
                floats, top_k = floats.pin_memory(), top_k.pin_memory()
            self._host = (floats, top_k)  # alive until the copies are done
            (self.temperature, self.top_p, self.min_p, self.presence, self.frequency, self.repetition,
             greedy) = floats.to(device, non_blocking=True).split(1, dim=1)
            self.top_k, self.greedy = top_k.to(device, non_blocking=True), greedy[:, 0].bool()
        self.bias = None
        if any(p.logit_bias for p in params):
            self.bias = torch.zeros(rows, vocab_size, device=device)
            for row, p in enumerate(params):
                for token_id, value in p.logit_bias:
                    self.bias[row, token_id] = value
        # [rows, vocab] tables only when some row has a penalty: at a 262k vocabulary they cost.
        self.output_counts = self.seen_in_prompt = None
        if self.uses_penalties:
            self.output_counts = torch.zeros(rows, vocab_size, dtype=torch.int32, device=device)
            self.seen_in_prompt = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
            for row, prompt in enumerate(prompts):
                self.seen_in_prompt[row, torch.tensor(list(prompt), dtype=torch.long, device=device)] = True
            for row, output in enumerate(outputs or []):
                if output:
                    ids = torch.tensor(list(output), dtype=torch.long, device=device)
                    self.output_counts[row].scatter_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
        self.max_logprobs = max((p.logprobs for p in params if p.logprobs is not None), default=None)

    def record(self, token_ids: torch.Tensor) -> None:
        """Count the tokens just sampled (one per row) for the penalties."""
        if self.uses_penalties:
            self.output_counts.scatter_add_(1, token_ids[:, None], torch.ones_like(token_ids[:, None],
                                                                                   dtype=torch.int32))


def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    counts = batch.output_counts
    seen = batch.seen_in_prompt | (counts > 0)
    penalised = torch.where(logits > 0, logits / batch.repetition, logits * batch.repetition)
    logits = torch.where(seen, penalised, logits)
    logits = logits - batch.frequency * counts - batch.presence * (counts > 0)
    return logits


def _filter(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """min_p, then top_k and top_p over the sorted distribution; the top token always stays."""
    probs = probs.masked_fill(probs < batch.min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(probs.shape[-1], device=probs.device)[None, :]
    cumulative = sorted_probs.cumsum(dim=-1)
    drop = (ranks >= batch.top_k) | (cumulative - sorted_probs >= batch.top_p)
    drop[..., 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


ARGMAX_BLOCK = 4096  # the largest block; a vocabulary it does not divide takes its largest power-of-two divisor


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)`, the same indices (the first maximum of each row), in two passes over blocks.

    On a CPU, argmax runs at about 1 ns an element, while a max reduction is vectorised: for 32 rows of
    Gemma's 262k vocabulary 10.7 against 2.2 ms, of Qwen's 152k (blocks of 128) 6.5 against 1.0. So:
    the max of each block, the first block that holds the row's max, and argmax within that block only.
    """
    rows, vocab = logits.shape
    block = math.gcd(vocab, ARGMAX_BLOCK)
    if logits.device.type != "cpu" or block < 64 or block == vocab:
        return logits.argmax(dim=-1)
    blocks = logits.reshape(rows, vocab // block, block)
    best_block = blocks.amax(dim=-1).argmax(dim=-1)  # the first block whose max is the row's max
    within = blocks[torch.arange(rows, device=logits.device), best_block].argmax(dim=-1)
    return best_block * block + within


def sample(logits: torch.Tensor, batch: SamplingBatch,
           generators: Sequence[torch.Generator | None]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                  torch.Tensor | None, torch.Tensor | None]:
    """logits [rows, vocab] -> (token ids [rows], chosen logprobs, top logprob values, top ids).

    The logprob tensors are None unless some row asked for logprobs. Nothing here syncs with the host.
    """
    raw = logits.float()
    logits = raw
    if batch.uses_penalties:
        logits = _apply_penalties(logits, batch)
    if batch.bias is not None:
        logits = logits + batch.bias
    chosen = greedy_argmax(logits)
    if not batch.all_greedy:
        probs = _filter(torch.softmax(logits / batch.temperature, dim=-1), batch)
        if all(g is generators[0] for g in generators):
            # One random stream for the batch (one request's n choices): a single draw.
            drawn = torch.multinomial(probs, 1, generator=generators[0]).squeeze(-1)
        else:
            # Rows of different requests keep their own seeded streams.
            drawn = torch.stack([torch.multinomial(probs[row], 1, generator=generators[row]).squeeze(0)
                                 for row in range(probs.shape[0])])
        chosen = torch.where(batch.greedy, chosen, drawn)
    if batch.max_logprobs is None:
        return chosen, None, None, None
    logprobs = torch.log_softmax(raw, dim=-1)
    chosen_logprobs = logprobs.gather(1, chosen[:, None]).squeeze(1)
    top_values, top_ids = (logprobs.topk(batch.max_logprobs, dim=-1) if batch.max_logprobs > 0 else (None, None))
    return chosen, chosen_logprobs, top_values, top_ids
