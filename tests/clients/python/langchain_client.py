"""LangChain (langchain-openai): bind_tools, bind_tools with a response_format, a call cut by max_tokens,
streaming, and the Responses API with tools."""

from langchain_openai import ChatOpenAI
from shapes import BASE, KEY, MODEL, GetTime, Report, report


def llm(**fields) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=BASE, api_key=KEY, temperature=1.0, max_retries=0, **fields)


seen = {}
message = llm(max_tokens=120, seed=1).bind_tools([GetTime], tool_choice="GetTime", strict=True).invoke("Time in Oslo?")
seen["call"] = [(c["name"], c["args"]) for c in message.tool_calls]

kinds = []
for seed in range(4):
    reply = llm(max_tokens=150, seed=seed).bind_tools([GetTime], response_format=Report, strict=True).invoke(
        "Weather in Paris?")
    parsed = reply.additional_kwargs.get("parsed")
    kinds.append("call" if reply.tool_calls else "answer" if isinstance(parsed, Report) else repr(reply))
seen["tools_and_format"] = kinds

cut = llm(max_tokens=36, seed=2).bind_tools([GetTime], tool_choice="GetTime", strict=True).invoke("Time in Oslo?")
seen["cut"] = {"content": cut.content, "calls": [c["name"] for c in cut.tool_calls],
               "invalid": [c["name"] for c in cut.invalid_tool_calls],
               "finish": cut.response_metadata.get("finish_reason")}

chunks = [chunk.content for chunk in llm(max_tokens=16, seed=3).stream("Hi")]
seen["stream"] = {"chunks": len(chunks), "text": "".join(chunks)}

gathered = None
for chunk in llm(max_tokens=120, seed=4).bind_tools([GetTime], tool_choice="GetTime", strict=True).stream("Time?"):
    gathered = chunk if gathered is None else gathered + chunk
seen["stream_call"] = [(c["name"], c["args"]) for c in gathered.tool_calls]

responses = llm(max_tokens=120, use_responses_api=True).bind_tools([GetTime], tool_choice="GetTime", strict=True).invoke("Time?")
seen["responses_call"] = [(c["name"], c["args"]) for c in responses.tool_calls]
report(seen)
