"""What every client script shares: the arguments (base URL, key, model), the answer and tool types, and printing
what the script saw as one JSON line."""

import json
import sys
from typing import Literal

from pydantic import BaseModel, Field

BASE, KEY, MODEL = sys.argv[1:4]


class Report(BaseModel):
    """A weather report (enums and bounded numbers: a random-weight model ends it within a few tokens)."""

    city: Literal["Paris", "Rome", "Oslo"]
    degrees: Literal[10, 20, 30]


class GetTime(BaseModel):
    """The time in a time zone."""

    zone: int = Field(ge=-12, le=12)


TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "strict": True,
                                              "parameters": {**GetTime.model_json_schema(),
                                                             "additionalProperties": False}}}


def report(seen: dict) -> None:
    print(json.dumps(seen, default=str))
