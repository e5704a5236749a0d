"""The OpenAI Agents SDK: an agent with a function tool and an output_type, on both its model classes (chat
completions and Responses)."""

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.exceptions import MaxTurnsExceeded, ModelBehaviorError
from openai import AsyncOpenAI
from shapes import BASE, KEY, MODEL, Report, report

set_tracing_disabled(True)
client = AsyncOpenAI(base_url=BASE, api_key=KEY, max_retries=0)


@function_tool
def get_time(zone: int) -> str:
    """The time in a zone."""
    return "noon"


seen = {}
for name, model in (("chat", OpenAIChatCompletionsModel(model=MODEL, openai_client=client)),
                    ("responses", OpenAIResponsesModel(model=MODEL, openai_client=client))):
    agent = Agent(name="weather", instructions="Answer with a report.", tools=[get_time], output_type=Report,
                  model=model, model_settings=ModelSettings(max_tokens=250, temperature=1.0))
    try:
        seen[name] = Runner.run_sync(agent, "Weather in Paris?", max_turns=4).final_output.model_dump()
    except MaxTurnsExceeded:  # the random model kept calling the tool: the protocol held every turn
        seen[name] = "max_turns"
    except ModelBehaviorError as exc:  # a reply cut by max_tokens (the SDK refuses an incomplete response)
        seen[name] = "incomplete" if "incomplete" in str(exc) else repr(exc)
report(seen)
