"""POST /v1/completions and POST /v1/embeddings: their request bodies, and the prompt field they share."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
)

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
    max_tokens: int | None = Field(default=16, ge=1, le=INT32_MAX)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "echo": (None, False),
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
