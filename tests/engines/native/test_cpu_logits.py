"""A bfloat16 model's logits on a CPU reach the sampler in float32 through `to_float_out` (csrc/fused_cpu.cpp): widened
exactly, on the ops' threads, into a buffer the runner keeps between steps (model_runner.PagedModelRunner._widen), so
that no step maps and zeroes a new 32 MB tensor. The tokens are those of the sampler's own Tensor.float."""

import asyncio

import pytest
import torch

from engines.config import load_model_config
from engines.native import cpu_kernel
from engines.native.engine import NativeEngine
from engines.protocol import GenerationRequest, SamplingParams
from tests.conftest import write_config
from tests.engines.test_continuous_batching import PROMPTS
from tests.tiny_models import native_chat_config

OPS = cpu_kernel.fused_ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="the CPU ops did not build here (no compiler?)")


def test_to_float_out_widens_exactly_into_the_given_tensor():
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 1000, generator=generator) * 100).bfloat16()
    x[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-40])  # the last a subnormal
    out = torch.full((5, 1000), 7.0)
    got = OPS.to_float_out(x, out)
    assert got.data_ptr() == out.data_ptr() and got.dtype == torch.float32
    assert torch.equal(out.nan_to_num(), x.float().nan_to_num()) and out[0, 2].isnan()
    # a view of a wider tensor's rows, as the runner passes: only those rows are written
    wide = torch.zeros(8, 1000)
    OPS.to_float_out(x[1:3], wide[4:6])
    assert torch.equal(wide[4:6], x[1:3].float()) and not wide[:4].any() and not wide[6:].any()
    for bad in (torch.empty(5, 1000, dtype=torch.bfloat16), torch.empty(5, 999), torch.empty(1000, 5).t()):
        with pytest.raises(RuntimeError, match="to_float_out"):
            OPS.to_float_out(x, bad)
    with pytest.raises(RuntimeError, match="to_float_out"):
        OPS.to_float_out(x.float(), out)


def _bf16_engine(root, source) -> NativeEngine:
    yaml = native_chat_config("bf16", source, max_num_seqs=4).replace("dtype: float32", "dtype: bfloat16")
    engine = NativeEngine(load_model_config(write_config(root, "bf16", yaml)), root)
    engine.load()
    return engine


def _generate(engine, prompts, params):
    async def main():
        await engine.start()

        async def one(i, prompt):
            events = [e async for e in engine.generate(GenerationRequest(f"r{i}", prompt, params))]
            return [t for e in events for t in e.token_ids]

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    return asyncio.run(main())


def test_a_bfloat16_engine_samples_from_the_kept_buffer_what_tensor_float_gives(tiny_gemma_dir, tmp_path):
    engine = _bf16_engine(tmp_path, tiny_gemma_dir)
    runner = engine.runner
    assert next(engine.model.parameters()).dtype == torch.bfloat16 and runner._to_float_out is not None
    prompts = [engine.encode_text(text) for text in PROMPTS]
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=5, ignore_eos=True)
    with_buffer = (_generate(engine, prompts, greedy), _generate(engine, prompts, sampled))
    buffer = runner._float_logits
    assert buffer.shape == (4, engine.vocab_size()) and buffer.dtype == torch.float32
    again = _generate(engine, prompts, greedy)
    assert runner._float_logits.data_ptr() == buffer.data_ptr()  # kept: no new tensor for later steps
    runner._to_float_out = None  # the sampler's Tensor.float, as where the ops cannot be built
    without = (_generate(engine, prompts, greedy), _generate(engine, prompts, sampled))
    assert with_buffer == without and again == with_buffer[0]
    assert all(len(tokens) == 12 for run in with_buffer for tokens in run)
