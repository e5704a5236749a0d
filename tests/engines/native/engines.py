"""A loaded native engine on a tiny model, and its greedy tokens for a few prompts: what the native tests
compare (with and without graphs, the CPU kernel, the int8 head)."""

import asyncio

from engines.config import load_model_config
from engines.native.engine import NativeEngine
from engines.protocol import GenerationRequest, SamplingParams
from tests.conftest import write_config
from tests.tiny_models import native_chat_config


def tiny_engine(root, name, source, **fields) -> NativeEngine:
    engine = NativeEngine(load_model_config(write_config(root, name, native_chat_config(name, source, **fields))),
                          root)
    engine.load()
    return engine


def greedy(engine, prompts: list[list[int]], max_tokens: int = 24) -> list[list[int]]:
    """Every prompt at once (they batch), greedy with ignore_eos; the tokens of each."""
    async def main():
        await engine.start()

        async def one(i, prompt):
            events = [e async for e in engine.generate(GenerationRequest(
                f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)))]
            return [t for e in events for t in e.token_ids]

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    return asyncio.run(main())
