"""What one sequence (one choice of a request) shows: tokens in, text events out.

It turns each sampled token into a GenerationEvent: incremental text, stop tokens and stop
strings, and the max_tokens cut, with the finish reason on the last event.
"""

from __future__ import annotations

from engines.detokenizer import StopStringMatcher, detokenizer_for
from engines.protocol import GenerationEvent, SamplingParams


class ChoiceOutput:
    def __init__(self, index: int, tokenizer, prompt_token_ids: list[int], params: SamplingParams,
                 eos_token_ids: frozenset[int]):
        self.index = index
        self.params = params
        self.prompt_len = len(prompt_token_ids)
        self._detokenizer = detokenizer_for(tokenizer, prompt_token_ids)
        self._stops = StopStringMatcher(params.stop)
        self._stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def push(self, token_id: int, logprobs=None, complete: bool = False) -> GenerationEvent:
        """One sampled token -> its event (finished when it ends the choice). `complete`: the choice's
        grammar has reached its end, so the choice stops here."""
        self.completion_tokens += 1
        entries = [logprobs] if logprobs is not None else None
        if token_id in self._stop_ids:
            return self._event([token_id], self._stops.flush(), "stop", entries)
        text, hit_stop = self._stops.push(self._detokenizer.push(token_id))
        if hit_stop:
            return self._event([token_id], text, "stop", entries)
        if complete or self.completion_tokens >= self.params.max_tokens:
            tail, _ = self._stops.push(self._detokenizer.flush())
            return self._event([token_id], text + tail + self._stops.flush(), "stop" if complete else "length",
                               entries)
        return self._event([token_id], text, None, entries)

    def abort(self) -> GenerationEvent:
        return self._event([], "", "abort", None)

    def _event(self, token_ids: list[int], text: str, reason: str | None, logprobs) -> GenerationEvent:
        self.finish_reason = reason
        return GenerationEvent(self.index, token_ids, text, reason, self.prompt_len, self.completion_tokens,
                               logprobs=logprobs)
