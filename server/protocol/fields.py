"""The fields every generation request shares (chat, legacy completions, responses), and the sampling
fields of chat and legacy completions."""

from __future__ import annotations

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
)

from engines.protocol import SamplingParams
from engines.structured import StructuredOutput
from server.errors import UnsupportedParameterError
from server.protocol.base import (
    OpenAIBaseModel,
    StopField,
    StreamOptions,
    TokenIdKey,
    check_stop,
)
from server.protocol.formats import ResponseFormat
from server.tool_calls import ToolPlan


class GenerationFields(OpenAIBaseModel):
    """Fields every generation request shares (chat, legacy completions, responses)."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    _tools: tuple = PrivateAttr(default=())  # (the checked tool plan,) once tool_plan() has built it

    def tool_plan(self) -> ToolPlan | None:
        """The request's tools and tool_choice, checked (400 naming what is wrong); None without tools. Built
        once: the checks, the request's admission and the service all ask for it."""
        if not self._tools:
            self._tools = (self._build_tool_plan(),)
        return self._tools[0]

    def _build_tool_plan(self) -> ToolPlan | None:
        return None

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if self.stream_options is not None:
            if not self.stream:
                raise UnsupportedParameterError("stream_options", "is only allowed when 'stream' is true")
            try:
                self.stream_options.reject_unsupported()
            except UnsupportedParameterError as exc:
                raise UnsupportedParameterError(f"stream_options.{exc.param}") from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class SamplingFields(GenerationFields):
    """Fields shared by chat and legacy completions."""

    n: int | None = None
    stop: StopField = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # the spec's int64 bounds
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[TokenIdKey, float] | None = Field(default=None, max_length=300)
    # Extensions beyond OpenAI's API (vLLM's names; the openai SDK sends them with extra_body).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    # Grammar-enforced output: OpenAI's for chat; an extension on the legacy completions route.
    response_format: ResponseFormat | None = None

    @property
    def logprobs_k(self) -> int | None:
        """How many top alternatives per token to return; None: no logprobs at all."""
        return None

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion length asked for; None: up to the context."""
        return None

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        """The engine's SamplingParams for this request (raises InvalidGenerationRequest naming a field)."""
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, n=1 if self.n is None else self.n, seed=self.seed,
            stop=self.stop_list, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            ignore_eos=bool(self.ignore_eos), logprobs=self.logprobs_k,
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
            structured=self.structured_output())

    def structured_output(self) -> StructuredOutput | None:
        """The grammar the answer decodes under (response_format here; chat adds tools)."""
        return self.response_format.structured() if self.response_format else None

    @field_validator("stop")
    @classmethod
    def _validate_stop(cls, value: StopField) -> StopField:
        return check_stop(value)

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
