"""POST /v1/completions and POST /v1/embeddings: their request bodies, and the prompt field they share.

`echo` returns each prompt before its completion, and with `logprobs` asks the engine for the prompt's logprobs
too (SamplingParams.prompt_logprobs). `max_tokens: 0` is allowed with `echo` alone, as OpenAI does (scoring a
text): the engine still runs one token, which the service drops (server/services/completions.py)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from engines.protocol import SamplingParams
from server.protocol.base import INT32_MAX, OpenAIBaseModel
from server.protocol.fields import SamplingFields


def _check_prompt(value):
    """A prompt (or embedding input) is a text, texts, token ids, or token-id arrays; none of them empty."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be an empty string")
        return value
    if not value:
        raise ValueError("must not be an empty array")
    for i, item in enumerate(value):
        if item == "" or item == []:
            raise ValueError(f"input[{i}] must not be empty")
    return value


# (token ids before texts: pydantic tries each member, and a list of 500,000 ids tried as texts first made
# 500,000 errors, 90 ms with the GIL held, issue #35)
PromptField = Annotated[str | list[int] | list[str] | list[list[int]], AfterValidator(_check_prompt)]


def as_prompt_list(value: PromptField) -> list[str | list[int]]:
    """A text, texts, one token-id list or several, as a list of texts or token-id lists."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, int) for item in value):
        return [list(value)]
    return list(value)


class CompletionRequest(SamplingFields):
    prompt: PromptField
    echo: bool | None = False  # (before max_tokens: its check reads it)
    max_tokens: int | None = Field(default=16, ge=0, le=INT32_MAX)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_zero_only_with_echo(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value == 0 and not info.data.get("echo"):
            raise ValueError("must be at least 1 (0 is allowed only with echo: the prompt alone, scored)")
        return value

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs

    @property
    def prompt_only(self) -> bool:
        """echo with max_tokens 0: the prompt (and its logprobs) without a completion."""
        return bool(self.echo) and self.max_tokens == 0

    @property
    def requested_max_tokens(self) -> int | None:
        return 1 if self.prompt_only else self.max_tokens

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        params = super().to_sampling_params(max_tokens)
        if self.echo and self.logprobs is not None:
            params = dataclasses.replace(params, prompt_logprobs=self.logprobs)
        return params

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "best_of": (None, 1),
        "suffix": (None, ""),
    }

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of text or token-id prompts."""
        return as_prompt_list(self.prompt)


MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(OpenAIBaseModel):
    model: str
    input: PromptField
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: PromptField) -> PromptField:
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS and not isinstance(value[0], int):
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed per request")
        return value

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of texts or token-id lists."""
        return as_prompt_list(self.input)
