"""instructor: TOOLS mode (a forced call of the response model), RESPONSES_TOOLS mode, and a call cut by
max_tokens (instructor raises IncompleteOutputException; before issue #39 it got the markup as content)."""

import instructor
from instructor.core.exceptions import IncompleteOutputException
from openai import OpenAI
from shapes import BASE, KEY, MODEL, Report, report

client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
ask = [{"role": "user", "content": "Weather in Paris?"}]
seen = {}
tools = instructor.from_openai(client, mode=instructor.Mode.TOOLS)
seen["tools"] = tools.chat.completions.create(model=MODEL, response_model=Report, messages=ask, max_tokens=120,
                                              temperature=1.0, seed=1, max_retries=0).model_dump()
responses = instructor.from_openai(client, mode=instructor.Mode.RESPONSES_TOOLS)
seen["responses_tools"] = responses.responses.create(model=MODEL, response_model=Report, input="Weather in Paris?",
                                                     max_output_tokens=120, max_retries=0).model_dump()
try:
    tools.chat.completions.create(model=MODEL, response_model=Report, messages=ask, max_tokens=36, seed=2,
                                  max_retries=0)
    seen["cut"] = "parsed"
except IncompleteOutputException as exc:
    seen["cut"] = type(exc).__name__
report(seen)
