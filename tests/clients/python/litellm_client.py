"""LiteLLM: completion with tools (forced), tools with a response format, a streamed call, and a call cut by
max_tokens."""

import json

import litellm
from shapes import BASE, KEY, MODEL, TIME_TOOL, Report, report

route = {"model": f"openai/{MODEL}", "api_base": BASE, "api_key": KEY}
ask = [{"role": "user", "content": "Time in Oslo?"}]
forced = {"type": "function", "function": {"name": "get_time"}}
seen = {}
reply = litellm.completion(messages=ask, tools=[TIME_TOOL], tool_choice=forced, max_tokens=120, seed=1, **route)
seen["call"] = [(c.function.name, json.loads(c.function.arguments)) for c in reply.choices[0].message.tool_calls]

fmt = {"type": "json_schema", "json_schema": {"name": "report", "schema": Report.model_json_schema(), "strict": True}}
kinds = []
for seed in range(4):
    choice = litellm.completion(messages=ask, tools=[TIME_TOOL], response_format=fmt, max_tokens=150, seed=seed,
                                **route).choices[0]
    kinds.append("call" if choice.message.tool_calls else
                 "answer" if choice.finish_reason == "stop" and Report.model_validate_json(choice.message.content)
                 else choice.finish_reason)
seen["tools_and_format"] = kinds

arguments, names = "", []
for chunk in litellm.completion(messages=ask, tools=[TIME_TOOL], tool_choice=forced, max_tokens=120, seed=3,
                                stream=True, **route):
    for call in chunk.choices[0].delta.tool_calls or []:
        names += [call.function.name] if call.function.name else []
        arguments += call.function.arguments or ""
seen["stream_call"] = [names, json.loads(arguments)]

cut = litellm.completion(messages=ask, tools=[TIME_TOOL], tool_choice=forced, max_tokens=36, seed=2, **route)
seen["cut"] = {"content": cut.choices[0].message.content, "finish": cut.choices[0].finish_reason,
               "calls": [c.function.name for c in cut.choices[0].message.tool_calls or []]}
report(seen)
