"""The engine does not trust its input (issue #23): a request that faults the sampler fails alone.

The server's edge refuses out-of-range parameters, so here they are forced past SamplingParams' own
checks, as a bug or a new code path might let them through."""

import asyncio

import pytest

from engines.protocol import EngineError, GenerationRequest, SamplingParams


def _poisoned(**fields) -> SamplingParams:
    params = SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True)
    for name, value in fields.items():
        object.__setattr__(params, name, value)  # past __post_init__'s checks
    return params


async def _collect(engine, request_id, prompt, params):
    return [e async for e in engine.generate(GenerationRequest(request_id, prompt, params))]


@pytest.mark.parametrize("poison", [{"top_k": 10**30}, {"temperature": 1e-50}, {"logit_bias": ((10**6, 5.0),)}])
def test_a_poisoned_row_fails_alone_and_does_not_count_as_an_engine_fault(registry, poison):
    engine = registry.resolve("tiny-llama")
    prompt = engine.encode_text("Once upon a time")

    async def scenario():
        await engine.start()
        good = SamplingParams(max_tokens=24, temperature=0.8, seed=7, ignore_eos=True)
        results = []
        for round_ in range(engine.MAX_CONSECUTIVE_FAULTS + 2):  # more than the faults that kill an engine
            mate = asyncio.create_task(_collect(engine, f"mate-{round_}", prompt, good))
            await asyncio.sleep(0)
            with pytest.raises(EngineError):
                await _collect(engine, f"bad-{round_}", prompt, _poisoned(**poison))
            results.append(await mate)
        return results

    for events in asyncio.run(scenario()):
        assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 24
    assert engine.health() is None and engine._faults == 0
    assert engine.stats()["kv_blocks_used"] == 0
