"""pydantic-ai: an agent with a tool and NativeOutput (the response format beside the tools), PromptedOutput,
and the default tool output, on the chat model and the Responses model."""

from pydantic_ai import Agent, NativeOutput, PromptedOutput
from pydantic_ai.exceptions import (
    IncompleteToolCall,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
)
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import UsageLimits
from shapes import BASE, KEY, MODEL, Report, report

provider = OpenAIProvider(base_url=BASE, api_key=KEY)
seen = {}
for name, model in (("chat", OpenAIChatModel(MODEL, provider=provider)),
                    ("responses", OpenAIResponsesModel(MODEL, provider=provider))):
    for kind, output in (("native", NativeOutput(Report)), ("prompted", PromptedOutput(Report)), ("tool", Report)):
        agent = Agent(model, output_type=output, model_settings={"max_tokens": 150, "temperature": 1.0, "seed": 1})

        @agent.tool_plain(strict=True)
        def get_time(zone: int) -> str:
            """The time in a zone."""
            return "noon"

        try:
            result = agent.run_sync("Weather in Paris?", usage_limits=UsageLimits(request_limit=3))
            seen[f"{name}_{kind}"] = result.output.model_dump()
        except UsageLimitExceeded:  # the random model kept calling the tool: the protocol held every turn
            seen[f"{name}_{kind}"] = "request_limit"
        except IncompleteToolCall:  # a call cut by max_tokens, seen as a call (before #39: markup as text)
            seen[f"{name}_{kind}"] = "cut_call"
        except UnexpectedModelBehavior:  # its output was not the model's (a prompt alone holds no grammar)
            seen[f"{name}_{kind}"] = "retries_exceeded"
report(seen)
