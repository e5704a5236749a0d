"""The shared base of every request body, and the fields and checks several resources use.

The base forbids fields it does not know (400 "Unrecognized request argument"). OpenAI fields
that we know but cannot honour yet are listed in a model's NEUTRAL table with the values that mean
"not used"; the base holds them aside, and `reject_unsupported` turns any other value into a 400 naming
the field: nothing is silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PrivateAttr,
    model_validator,
)

from server.errors import UnsupportedParameterError

# Every integer a client sends is bounded before it reaches a tensor, a database column or a datetime:
# Python ints are unbounded, and one past int64 faulted the sampler (issue #23). The sampling fields'
# bounds are written once, in the engine contract's SamplingParams; `to_sampling_params` builds it, and
# the pipeline (server/services/pipeline.py) does so first, before any work. The rest are bounded here.
INT32_MAX = 2**31 - 1


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # field name -> the values that mean "not used" (anything else is rejected)
    NEUTRAL: ClassVar[dict[str, tuple]] = {}
    _unhonoured: dict[str, Any] = PrivateAttr(default_factory=dict)  # NEUTRAL fields the model does not declare

    @model_validator(mode="wrap")
    @classmethod
    def _hold_unhonoured(cls, data: Any, handler):
        if isinstance(data, OpenAIBaseModel):  # validated already (server/routing.py): keep what it held
            return handler(data)
        held = {}
        if isinstance(data, dict):
            held = {name: data[name] for name in cls.NEUTRAL if name in data and name not in cls.model_fields}
            data = {key: value for key, value in data.items() if key not in held}
        model = handler(data)
        model._unhonoured = held
        return model

    def reject_unsupported(self) -> None:
        for name, neutral in self.NEUTRAL.items():
            value = getattr(self, name) if name in type(self).model_fields else self._unhonoured.get(name)
            if value not in neutral:
                raise UnsupportedParameterError(name)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {"include_obfuscation": (None, False)}


StopField = str | list[str] | None


def _token_id_key(key: str) -> str:
    if not key.lstrip("-").isdigit() or len(key) > 12:
        raise ValueError(f"keys must be token ids, not {key[:20]!r}")
    return key


TokenIdKey = Annotated[str, AfterValidator(_token_id_key)]  # a logit_bias key


def check_stop(value: StopField) -> StopField:
    if isinstance(value, list):
        if len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
    elif value == "":
        raise ValueError("a stop sequence must not be empty")
    return value




def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's Metadata: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return value
    if len(value) > 16:
        raise ValueError("at most 16 key-value pairs are allowed")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
        if len(item) > 512:
            raise ValueError(f"the value of {key!r} is longer than 512 characters")
    return value
