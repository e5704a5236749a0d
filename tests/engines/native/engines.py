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


def lowbit_weights(model, bits: int = 4) -> None:
    """Round each decoder linear's weight to `bits` (4 or 6) in place, in blocks of 32 (cpu_quant's records), as a
    Q4_1 GGUF's (4) or a Q5_0 one's (6: held exactly) already are: what `quantization: int4`/`int6` take."""
    import torch

    from engines.native.cpu_quant import dequantize_lowbit, quantize_weight_q4, quantize_weight_q6

    quantize = quantize_weight_q4 if bits == 4 else quantize_weight_q6
    head = model.get_output_embeddings()
    with torch.no_grad():
        for module in model.modules():
            if type(module) is torch.nn.Linear and module is not head and module.weight is not None:
                rounded = dequantize_lowbit(quantize(module.weight), module.in_features)
                module.weight.copy_(rounded.to(module.weight.dtype))


def lowbit_copy(source, dest, bits: int = 4):
    """A copy of the checkpoint at `source` with its decoder linears in `bits` (lowbit_weights)."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(source, dest)
    model = AutoModelForCausalLM.from_pretrained(source)
    lowbit_weights(model, bits)
    model.save_pretrained(dest)
    return dest
