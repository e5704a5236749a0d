"""Prompt logprobs (legacy completions' `echo` with `logprobs`, vLLM's `prompt_logprobs`): each prompt token's
log-probability given the tokens before it, and the top k there.

They come from the prefill itself: a chunk of a sequence that asks for them keeps the logits of its prompt
positions besides the last one (position p's logits score token p + 1), and they are taken from the raw
logits as the sampler's logprobs are. Chunked prefill adds each chunk's entries in order; a sequence
preempted mid-prompt recomputes from its start (it takes no prefix hits until its entries are all in:
block_manager.py) and adds only the entries it does not have. Only a request's first choice computes them;
the others share its prompt through the prefix cache and its entries through the engine core."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.native.sequence import Sequence
from engines.protocol import TokenLogprobs


@dataclass(frozen=True)
class PromptRows:
    """Rows of a step's kept logits that score `seq`'s prompt tokens `first + 1 .. first + count`."""

    seq: Sequence
    first: int  # the first position whose logits are kept
    count: int


def prompt_rows(seq: Sequence, start: int, end: int) -> PromptRows | None:
    """The prompt positions among `start .. end - 1` (a chunk) whose logits `seq` still needs; None if none."""
    if not seq.needs_prompt_logprobs:
        return None
    first = max(start, len(seq.prompt_logprobs) - 1)
    last = min(end, seq.num_prompt_tokens - 1)  # the last prompt position's logits are sampled from, not scored
    return PromptRows(seq, first, last - first) if last > first else None


# Rows log-softmaxed at once: a 512-token chunk of a 262k vocabulary is 512 MiB of float32 logits, so they are
# widened and normalised a slice at a time.
SLICE_ROWS = 64


def record(logits: torch.Tensor, rows: list[PromptRows]) -> None:
    """Append each sequence's prompt entries from its kept logits ([sum of counts, vocab], in `rows`' order).
    A host sync: only steps that score a prompt pay it."""
    at = 0
    for row in rows:
        k = row.seq.params.prompt_logprobs
        for lo in range(0, row.count, SLICE_ROWS):
            hi = min(lo + SLICE_ROWS, row.count)
            scored = torch.log_softmax(logits[at + lo:at + hi].float(), dim=-1)
            targets = torch.tensor(row.seq.token_ids[row.first + 1 + lo:row.first + 1 + hi], device=logits.device)
            chosen = scored.gather(1, targets[:, None]).squeeze(1).tolist()
            best = scored.topk(k, dim=-1) if k else None
            top_ids, top_values = (best.indices.tolist(), best.values.tolist()) if k else ([], [])
            for i, value in enumerate(chosen):
                pairs = list(zip(top_ids[i], top_values[i])) if k else []
                row.seq.prompt_logprobs.append(TokenLogprobs(value, pairs))
        at += row.count
