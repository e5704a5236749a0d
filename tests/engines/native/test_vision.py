"""Vision-language models on the native engine (engines/native/vision.py), on tiny random-weight Gemma 3 (SigLIP,
bidirectional attention within an image) and LLaVA (CLIP, causal) models: greedy tokens equal transformers'
`generate` on the same images and prompts, with requests batched together, prefill chunks cut at (or stretched
past) an image, and the prefix cache keyed by the image's content."""

import asyncio
import hashlib
import io

import pytest
import torch
from PIL import Image

from engines.native.sequence import Sequence
from engines.native.vision import ImageSpan, PreparedImages
from engines.protocol import (
    GenerationRequest,
    ImageInput,
    InvalidGenerationRequest,
    SamplingParams,
)
from tests.engines.native.engines import tiny_engine
from tests.tiny_vlms import build_tiny_gemma3_vlm, build_tiny_llava

TOKENS = 12


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {"gemma3": build_tiny_gemma3_vlm(root / "gemma3"), "llava": build_tiny_llava(root / "llava")}


def image(seed: int, size=(50, 40)) -> ImageInput:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).byte().numpy()
    picture = Image.fromarray(pixels)
    encoded = io.BytesIO()
    picture.save(encoded, "PNG")
    return ImageInput(picture, hashlib.sha256(encoded.getvalue()).hexdigest())


def messages(text: str, count: int = 1) -> list[dict]:
    parts = [{"type": "text", "text": text}] + [{"type": "image"}] * count + [{"type": "text", "text": " and?"}]
    return [{"role": "user", "content": parts}]


class Reference:
    """transformers' own model and processor on the same directory: the tokens its greedy `generate` gives."""

    def __init__(self, source):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(source, use_fast=False)
        self.model = AutoModelForImageTextToText.from_pretrained(source).eval()

    def inputs(self, text: str, images: list[ImageInput]):
        parts = [{"type": "text", "text": text}] + [{"type": "image", "image": i.image} for i in images] + [
            {"type": "text", "text": " and?"}]
        return self.processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True, return_tensors="pt")

    def greedy(self, text: str, images: list[ImageInput], causal: bool = False) -> list[int]:
        """Up to TOKENS tokens, fewer where the model writes its EOS (which `generate` stops at; the engine's requests
        here ignore it, so compare with `same`). min_new_tokens would forbid the EOS, so it is not used."""
        inputs = self.inputs(text, images)
        if causal:  # what Gemma 3 would give without its bidirectional image mask
            inputs.pop("token_type_ids", None)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
        return out[0, inputs["input_ids"].shape[1]:].tolist()


def same(ours: list[int], expected: list[int]) -> bool:
    """The engine's tokens (EOS ignored) begin with transformers' (which stop at EOS), at least 4 of them."""
    return len(expected) >= 4 and ours[:len(expected)] == expected


def run(engine, requests: list[tuple[list[int], object]]) -> list[list[int]]:
    async def main():
        await engine.start()
        try:
            async def one(i, ids, prepared):
                params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
                events = [e async for e in engine.generate(GenerationRequest(f"r{i}", ids, params, images=prepared))]
                return [t for e in events for t in e.token_ids]

            return await asyncio.gather(*(one(i, ids, prepared) for i, (ids, prepared) in enumerate(requests)))
        finally:
            await engine.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("family", ["gemma3", "llava"])
def test_greedy_tokens_equal_transformers_with_different_images_batched(vlm_dirs, tmp_path, family):
    engine = tiny_engine(tmp_path, family, vlm_dirs[family], max_model_len=256, block_size=4,
                         kv_cache_dtype="model")
    reference = Reference(vlm_dirs[family])
    cases = [("what is in", [image(1)]), ("what is in", [image(2)]), ("compare", [image(3), image(4)])]
    encoded = [engine.encode_chat_images(messages(text, len(images)), images) for text, images in cases]
    for (text, images), (ids, _) in zip(cases, encoded):
        assert ids == reference.inputs(text, images)["input_ids"][0].tolist()  # placeholders counted as theirs
    text_only = engine.encode_chat([{"role": "user", "content": "no picture here"}])
    ours = run(engine, [*encoded, (text_only, None)])
    expected = [reference.greedy(text, images) for text, images in cases]
    assert all(same(o, e) for o, e in zip(ours[:3], expected)), (ours, expected)
    assert ours[0] != ours[1]  # the image, not only the text, decides the answer
    # the text-only request ran the plain causal LM, as a text model's would
    with torch.inference_mode():
        out = reference.model.generate(torch.tensor([text_only]), max_new_tokens=TOKENS, do_sample=False)
    assert same(ours[3], out[0, len(text_only):].tolist())


def test_gemma3_image_tokens_attend_both_ways(vlm_dirs, tmp_path):
    """The bidirectional mask changes this prompt's answer in transformers, and ours follows it."""
    engine = tiny_engine(tmp_path, "gemma3", vlm_dirs["gemma3"], max_model_len=256, block_size=4,
                         kv_cache_dtype="model")
    reference = Reference(vlm_dirs["gemma3"])
    seed = next(s for s in range(1, 40) if reference.greedy("look", [image(s)]) !=
                reference.greedy("look", [image(s)], causal=True))
    ids, prepared = engine.encode_chat_images(messages("look"), [image(seed)])
    assert same(run(engine, [(ids, prepared)])[0], reference.greedy("look", [image(seed)]))


@pytest.mark.parametrize("family", ["gemma3", "llava"])
def test_chunked_prefill_with_a_boundary_inside_the_image(vlm_dirs, tmp_path, family):
    reference = Reference(vlm_dirs[family])
    images = [image(5)]
    expected = reference.greedy("what is in", images)
    probe = tiny_engine(tmp_path / "probe", family, vlm_dirs[family], max_model_len=256, block_size=4,
                        kv_cache_dtype="model")
    ids, prepared = probe.encode_chat_images(messages("what is in"), images)
    span = prepared.spans[0]
    budget = span.start + 2  # the first chunk would end two tokens into the image
    engine = tiny_engine(tmp_path, family, vlm_dirs[family], max_model_len=256, block_size=4,
                         kv_cache_dtype="model", max_num_batched_tokens=budget)
    chunks = []
    real_run = engine.runner.run
    engine.runner.run = lambda scheduled: chunks.append([(c.seq.num_computed_tokens, c.num_tokens)
                                                         for c in scheduled]) or real_run(scheduled)
    ids, prepared = engine.encode_chat_images(messages("what is in"), images)
    assert same(run(engine, [(ids, prepared)])[0], expected)
    first = chunks[0][0]
    if family == "gemma3":  # both ways within the image: the chunk ends where the image starts
        assert first == (0, span.start)
    else:  # causal: the chunk ends inside the image, and the next takes the rest of its features
        assert first == (0, budget) and span.start < budget < span.end


@pytest.mark.parametrize("family", ["gemma3", "llava"])
def test_prefix_cache_hits_the_same_image_and_misses_another(vlm_dirs, tmp_path, family):
    engine = tiny_engine(tmp_path, family, vlm_dirs[family], max_model_len=256, block_size=4,
                         kv_cache_dtype="model")
    reference = Reference(vlm_dirs[family])
    blocks = engine._scheduler.blocks
    first = engine.encode_chat_images(messages("what is in"), [image(6)])
    run(engine, [first])
    span = first[1].spans[0]

    def cached_after(request) -> int:
        before = blocks.prefix_hits
        tokens = run(engine, [request])[0]
        return blocks.prefix_hits - before, tokens

    again = engine.encode_chat_images(messages("what is in"), [image(6)])
    hits, tokens = cached_after(again)
    assert hits >= span.end  # the image's blocks came from the cache
    assert same(tokens, reference.greedy("what is in", [image(6)]))
    other = engine.encode_chat_images(messages("what is in"), [image(7)])
    assert other[0] == again[0]  # the same tokens: only the image differs
    hits, tokens = cached_after(other)
    assert hits <= span.start  # nothing from the first block that holds the image on
    assert same(tokens, reference.greedy("what is in", [image(7)]))


def test_text_marking_an_image_is_refused(vlm_dirs, tmp_path):
    engine = tiny_engine(tmp_path, "llava", vlm_dirs["llava"], max_model_len=256, block_size=4)
    forged = [{"role": "user", "content": [{"type": "text", "text": "<image> two?"}, {"type": "image"}]}]
    with pytest.raises(InvalidGenerationRequest) as refused:
        engine.encode_chat_images(forged, [image(1)])
    assert refused.value.param == "messages"


def test_a_text_model_refuses_images(tiny_llama_dir, tmp_path):
    engine = tiny_engine(tmp_path, "llama", tiny_llama_dir, max_model_len=128)
    assert not engine.accepts_images
    with pytest.raises(InvalidGenerationRequest) as refused:
        engine.encode_chat_images(messages("hi"), [image(1)])
    assert "does not take images" in str(refused.value) and refused.value.param == "messages"


def _sequence(spans, bidirectional=True, size=4) -> Sequence:
    prepared = PreparedImages([ImageSpan(s, e, d, {}) for s, e, d in spans], bidirectional)
    return Sequence("s", list(range(40)), size, images=prepared)


def test_block_keys_carry_the_digest_of_the_images_they_hold():
    one, two = _sequence([(6, 10, "aa")]), _sequence([(6, 10, "bb")])
    assert one.block_key(0) == two.block_key(0) == tuple(range(4))  # before the image: tokens only
    assert one.block_key(1) != two.block_key(1) and one.block_key(2) != two.block_key(2)
    assert one.block_key(3) == two.block_key(3)


def test_chunks_are_not_cut_inside_a_bidirectional_image():
    seq = _sequence([(6, 10, "aa"), (20, 30, "bb")])
    assert seq.fit_chunk(8) == 6  # would end inside: ends before it
    assert seq.fit_chunk(12) == 12  # past it
    seq.num_computed_tokens = 6
    assert seq.fit_chunk(2) == 4  # starts at it: stretched to its end, over the budget
    seq.num_computed_tokens = 18
    assert seq.fit_chunk(4) == 2
    causal = _sequence([(6, 10, "aa")], bidirectional=False)
    assert causal.fit_chunk(8) == 8


@pytest.mark.parametrize("family", ["gemma3", "llava"])
def test_choices_of_one_request_share_the_image_prompt(vlm_dirs, tmp_path, family):
    """n=2 in the CPU's blocks of 64: the second choice takes the prompt's full blocks from the cache and
    computes the image in the last, partial one again (its features are made again for it)."""
    engine = tiny_engine(tmp_path, family, vlm_dirs[family], max_model_len=256, kv_cache_dtype="model")
    reference = Reference(vlm_dirs[family])
    ids, prepared = engine.encode_chat_images(messages("what is in"), [image(8)])

    async def main():
        await engine.start()
        try:
            params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True, n=2)
            return [e async for e in engine.generate(GenerationRequest("n2", ids, params, images=prepared))]
        finally:
            await engine.stop()

    events = asyncio.run(main())
    expected = reference.greedy("what is in", [image(8)])
    for index in (0, 1):
        assert same([t for e in events if e.index == index for t in e.token_ids], expected)


def test_a_request_whose_image_fails_in_the_vision_tower_fails_alone(vlm_dirs, tmp_path):
    engine = tiny_engine(tmp_path, "llava", vlm_dirs["llava"], max_model_len=256, block_size=4,
                         kv_cache_dtype="model")
    reference = Reference(vlm_dirs["llava"])
    good = engine.encode_chat_images(messages("what is in"), [image(9)])
    bad = engine.encode_chat_images(messages("what is in"), [image(10)])
    bad[1].spans[0].pixels["pixel_values"] = bad[1].spans[0].pixels["pixel_values"][..., :20, :20]  # a broken tensor

    async def main():
        await engine.start()
        try:
            async def one(name, request):
                params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
                try:
                    events = [e async for e in engine.generate(GenerationRequest(name, *request[:1], params,
                                                                                 images=request[1]))]
                except Exception as exc:  # noqa: BLE001 - what the failing request raised
                    return exc
                return [t for e in events for t in e.token_ids]

            return await asyncio.gather(one("bad", bad), one("good", good))
        finally:
            await engine.stop()

    failed, tokens = asyncio.run(main())
    assert isinstance(failed, Exception)
    assert same(tokens, reference.greedy("what is in", [image(9)]))
    assert engine._faults == 0 and engine._scheduler.blocks.num_used_blocks == 0


def test_a_steps_images_go_through_the_vision_tower_together(vlm_dirs, tmp_path):
    from engines.native.scheduler import ScheduledChunk

    engine = tiny_engine(tmp_path, "gemma3", vlm_dirs["gemma3"], max_model_len=256, block_size=4)
    vision, calls = engine.vision, []
    real = vision.vlm.model.get_image_features
    vision.vlm.model.get_image_features = lambda **kw: calls.append(kw["pixel_values"].shape[0]) or real(**kw)
    prepared = [engine.encode_chat_images(messages("what is in", count), [image(20 + i) for i in range(count)])
                for count in (1, 2)]
    sequences = [Sequence(f"s{i}", ids, 4, images=images) for i, (ids, images) in enumerate(prepared)]
    kept, failed = vision.ready([ScheduledChunk(seq, seq.num_tokens) for seq in sequences])
    assert calls == [3] and len(kept) == 2 and not failed  # three images, one pass
    for ids, images in prepared:
        for index in range(len(images.spans)):
            batched = images.features.pop(index)
            torch.testing.assert_close(batched, vision.features(images, index), rtol=1e-5, atol=1e-5)
