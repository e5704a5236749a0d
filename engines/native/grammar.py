"""Grammar-constrained decoding for the native engine (llguidance; why: engines/structured.py).

- Compiling: a request's grammar is compiled for this engine's tokenizer on a small thread pool, from the
  request's own async task, never on the step loop; compiled grammars are kept (least recently used out) by
  their spec, and each choice gets its own copy of the compiled matcher. A compile that takes over
  COMPILE_TIMEOUT_S fails that request alone.
- Masking: each step, the matchers of the rows being sampled fill one bitmask in llguidance's native threads;
  it goes to the device and sets every disallowed token's logit to -inf, before penalties, temperature and
  logprobs (so logprobs are those of the masked distribution).
- Advancing: the engine core feeds each sampled token to its row's matcher; a matcher that has reached the
  end of its grammar finishes the choice (finish_reason "stop"). Preemption keeps a sequence's tokens, so its
  matcher needs no rollback; an aborted sequence's matcher is dropped with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from engines.protocol import InvalidGenerationRequest
from engines.structured import StructuredOutput

COMPILE_TIMEOUT_S = 10.0
CACHE_SIZE = 128


class GrammarCache:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: list[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = eos_token_ids
        self._ll_tokenizer = None
        self._lock = threading.Lock()
        self._compiled: OrderedDict[StructuredOutput, object] = OrderedDict()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="grammar")
        # The tokenizer's grammar view takes seconds for a large vocabulary: start it now, off the load.
        self._pool.submit(self._ll)

    def _ll(self):
        with self._lock:  # built once (about a second for a large vocabulary)
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._vocab_size,
                                                                  eos_token=self._eos)
            return self._ll_tokenizer

    def compile(self, structured: StructuredOutput):
        """The compiled matcher for `structured` (blocking; a copy of it serves each choice)."""
        with self._lock:
            if structured in self._compiled:
                self._compiled.move_to_end(structured)
                return self._compiled[structured]
        from llguidance import LLMatcher

        matcher = LLMatcher(self._ll(), structured.check(), log_level=0)
        if matcher.is_error():
            raise InvalidGenerationRequest(f"the grammar cannot be enforced: {matcher.get_error()}",
                                           param=structured.param, code="invalid_schema")
        with self._lock:
            self._compiled[structured] = matcher
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return matcher

    async def matcher(self, structured: StructuredOutput):
        """Compile off the event loop and the step loop; a compile over the time limit fails this request."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, self.compile, structured)
        try:
            return await asyncio.wait_for(asyncio.shield(future), COMPILE_TIMEOUT_S)
        except TimeoutError:
            raise InvalidGenerationRequest(f"the grammar took over {COMPILE_TIMEOUT_S:g} s to compile; simplify the "
                                           "schema", param=structured.param, code="grammar_too_complex") from None


_executor = None


def _parallel():
    global _executor
    if _executor is None:
        import llguidance

        _executor = llguidance.LLExecutor()
    return _executor


def mask_logits(logits: torch.Tensor, matchers: list) -> None:
    """Set the logits of tokens each row's grammar does not allow to -inf, in place (rows without a matcher,
    None, are left alone)."""
    rows = [row for row, matcher in enumerate(matchers) if matcher is not None]
    if not rows:
        return
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask_par

    vocab = logits.shape[-1]
    bitmask = allocate_token_bitmask(len(rows), vocab)
    fill_next_token_bitmask_par(_parallel(), [(matchers[row], i) for i, row in enumerate(rows)], bitmask)
    if logits.device.type == "cpu":  # numpy unpacks bits in C: 1 ms for 32 x 262k, where torch shifts took 70
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        allowed = torch.from_numpy(bits.view(np.bool_))
    else:
        words = bitmask.to(logits.device, non_blocking=True)
        shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        allowed = ((words[:, :, None] >> shifts) & 1).reshape(len(rows), -1)[:, :vocab].bool()
    forbidden = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    if len(rows) == logits.shape[0]:
        torch.where(allowed, logits, forbidden, out=logits)
    else:
        index = torch.tensor(rows, device=logits.device)
        logits[index] = torch.where(allowed, logits[index], forbidden)
