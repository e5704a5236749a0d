"""server/images.py alone (no server): the formats an image part may hold, each refusal's code and param, and the
prompt building of chat messages and Responses input with images (a fake engine records what it is given)."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from server.errors import InvalidRequestError
from server.images import ImageLoader, ImagePolicy, decode_image, image_ref

PARAM = "messages[0].content[1].image_url.url"


def encoded(fmt: str, size=(32, 24), color=(200, 30, 40), mode="RGB", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def noise_png(size=(64, 64)) -> bytes:
    import random

    rng = random.Random(0)
    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def two_frame_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(width=30000, height=30000) -> bytes:
    """A real 1-bit grayscale PNG of width x height black pixels: about 110 KB, built row by row."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def load(url: str, policy: ImagePolicy | None = None, detail=None):
    policy = policy or ImagePolicy()
    return ImageLoader(policy).load(image_ref(policy, PARAM, url=url, detail=detail))


def refused(call, code: str, param: str = PARAM) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    assert (caught.value.code, caught.value.param, caught.value.status_code) == (code, param, 400), caught.value.message
    return caught.value


@pytest.mark.parametrize("fmt,mime,mode", [("PNG", "image/png", "RGBA"), ("JPEG", "image/jpeg", "RGB"),
                                           ("WEBP", "image/webp", "RGB"), ("GIF", "image/gif", "P"),
                                           ("PNG", "image/png", "L")])
def test_formats_decode_to_rgb_with_the_bytes_digest(fmt, mime, mode):
    color = {"RGBA": (200, 30, 40, 255), "RGB": (200, 30, 40), "P": 3, "L": 90}[mode]
    data = encoded(fmt, mode=mode, color=color)
    image = load(data_url(data, mime), detail="low")
    assert image.image.mode == "RGB" and image.image.size == (32, 24)
    assert image.digest == hashlib.sha256(data).hexdigest()
    assert image.detail == "low"


def test_jpg_alias_and_default_detail():
    image = load(data_url(encoded("JPEG"), "image/jpg"))
    assert image.detail == "auto" and image.image.size == (32, 24)


def test_mpo_is_a_jpeg():
    """A JPEG holding several pictures (as some cameras write them): its first."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(buffer, format="MPO", save_all=True,
                                                 append_images=[Image.new("RGB", (8, 8))])
    image = load(data_url(buffer.getvalue(), "image/jpeg"))
    assert image.image.size == (8, 8) and image.image.getpixel((4, 4))[1] > 200


def test_gif_gives_its_first_frame():
    image = load(data_url(two_frame_gif(), "image/gif"))
    assert image.image.getpixel((0, 0)) == (255, 0, 0)


def test_the_same_source_is_decoded_once():
    loader = ImageLoader(ImagePolicy())
    url = data_url(encoded("PNG"))
    first, second = loader.load(image_ref(loader.policy, PARAM, url=url)), loader.load(
        image_ref(loader.policy, PARAM, url=url, detail="high"))
    assert first.image is second.image and (first.detail, second.detail) == ("auto", "high")


def test_bad_detail():
    refused(lambda: image_ref(ImagePolicy(), PARAM, url=data_url(encoded("PNG")), detail="medium",
                              detail_param="messages[0].content[1].image_url.detail"),
            "invalid_value", "messages[0].content[1].image_url.detail")


def test_http_urls_are_refused_unless_allowed():
    error = refused(lambda: image_ref(ImagePolicy(), PARAM, url="https://example.com/cat.png"),
                    "image_url_not_allowed")
    assert "air-gapped" in error.message and "--allow-image-urls" in error.message
    assert image_ref(ImagePolicy(allow_urls=True), PARAM, url="https://example.com/cat.png").url
    refused(lambda: image_ref(ImagePolicy(), PARAM, url="file:///etc/passwd"), "invalid_image_url")
    refused(lambda: image_ref(ImagePolicy(), PARAM, url=""), "missing_required_parameter")


def test_data_url_shapes():
    refused(lambda: image_ref(ImagePolicy(), PARAM, url="data:image/png,rawbytes"), "invalid_image_url")
    refused(lambda: image_ref(ImagePolicy(), PARAM, url="data:image/png;base64"), "invalid_image_url")
    refused(lambda: load(data_url(b"x", "image/svg+xml")), "invalid_image_format")
    refused(lambda: load(data_url(b"x", "application/pdf")), "invalid_image_format")
    refused(lambda: load(data_url(b"x", "image/tiff")), "invalid_image_format")


def test_bad_base64():
    refused(lambda: load("data:image/png;base64,iVBORw0KGgo!!!!"), "invalid_image")
    refused(lambda: load("data:image/png;base64,iVBORw0KGgo"), "invalid_image")  # bad padding


@pytest.mark.parametrize("data,says", [(SVG, "SVG"), (PDF, "PDF"), (b"hello world, not an image", "unrecognised")])
def test_non_images_behind_an_image_type(data, says):
    error = refused(lambda: load(data_url(data, "image/png")), "invalid_image_format")
    assert says in error.message


def test_declared_type_must_match_the_bytes():
    error = refused(lambda: load(data_url(encoded("JPEG"), "image/png")), "invalid_image_format")
    assert "image/jpeg" in error.message


def test_truncated_and_corrupt():
    data = noise_png()
    refused(lambda: load(data_url(data[:len(data) * 2 // 3])), "invalid_image")
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = b"\xff" * 64  # inside IDAT
    refused(lambda: load(data_url(bytes(corrupt))), "invalid_image")
    refused(lambda: load(data_url(data[:20])), "invalid_image")  # the header itself cut


def test_decompression_bomb_is_refused_from_its_header():
    bomb = bomb_png()
    assert len(bomb) < 200_000
    error = refused(lambda: load(data_url(bomb)), "image_too_large")
    assert "pixels" in error.message
    # over our cap but under Pillow's own (twice it): refused by our header check, nothing decoded
    error = refused(lambda: load(data_url(bomb_png(10000, 6000))), "image_too_large")
    assert "10000x6000" in error.message


def test_byte_cap_before_and_after_decoding_base64():
    policy = ImagePolicy(max_bytes=1000)
    big = noise_png()
    assert len(big) > 1000
    refused(lambda: image_ref(policy, PARAM, url=data_url(big)), "image_too_large")
    refused(lambda: decode_image(big, None, PARAM, policy), "image_too_large")


def test_pixel_cap_is_the_policys():
    refused(lambda: load(data_url(encoded("PNG", size=(100, 100))), ImagePolicy(max_pixels=9999)), "image_too_large")


def test_an_url_the_server_may_no_longer_fetch():
    """A stored chain's http(s) URL, the server since restarted without --allow-image-urls."""
    from server.images import ImageRef

    refused(lambda: ImageLoader(ImagePolicy()).load(ImageRef(param="previous_response_id", url="http://x/y.png")),
            "image_url_not_allowed", "previous_response_id")


# ---- prompt building ------------------------------------------------------------------------------------------
class FakeEngine:
    """What the prompts call on an engine: records encode_chat_images' arguments."""

    max_model_len = 4096
    accepts_images = True

    def __init__(self, accepts=True):
        self.accepts_images = accepts
        self.calls = []

        class Config:
            id = "fake-vlm"
            default_max_tokens = None
        self.config = Config

    def template_tool_format(self):
        return None

    def min_prompt_tokens(self, text):
        return len(text) // 8

    def max_token_chars(self):
        return 8

    def encode_chat(self, messages, tools=None):
        self.calls.append(("text", messages, None, tools))
        return [1] * (1 + sum(len(str(m["content"])) for m in messages) // 4)

    def encode_chat_images(self, messages, images, tools=None):
        self.calls.append(("images", messages, list(images), tools))
        return [2] * (10 * len(images) + 1), {"prepared": [i.digest for i in images]}

    def count_tokens(self, texts):
        return [len(t) // 4 + 1 for t in texts]


def _message(*parts, role="user"):
    from server.protocol import ChatMessage

    return ChatMessage(role=role, content=list(parts))


def _image(url, detail=None):
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


def test_chat_messages_become_hf_parts_and_images_in_order():
    from server.protocol import ChatMessage
    from server.services.prompts import ChatPrompt

    red, blue = data_url(encoded("PNG", color=(255, 0, 0))), data_url(encoded("JPEG", color=(0, 0, 255)), "image/jpeg")
    messages = [ChatMessage(role="system", content="Be brief."),
                _message({"type": "text", "text": "Compare "}, {"type": "text", "text": "these: "}, _image(red),
                         {"type": "text", "text": " and "}, _image(blue, "high")),
                ChatMessage(role="assistant", content="Red, blue."),
                _message(_image(red, "low"))]
    prompt = ChatPrompt(messages)
    engine = FakeEngine()
    assert prompt.floor(engine) >= 3  # one token an image at least
    ids = prompt.token_ids(engine)
    kind, rendered, images, _ = engine.calls[-1]
    assert kind == "images" and len(ids) == 31
    assert rendered == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare these: "}, {"type": "image"},
                                     {"type": "text", "text": " and "}, {"type": "image"}]},
        {"role": "assistant", "content": "Red, blue."},
        {"role": "user", "content": [{"type": "image"}]}]
    assert [i.detail for i in images] == ["auto", "high", "low"]
    assert images[0].digest == images[2].digest != images[1].digest
    assert images[1].image.getpixel((0, 0))[2] > 200
    assert prompt.images() == {"prepared": [i.digest for i in images]}


def test_chat_without_images_keeps_string_content():
    from server.services.prompts import ChatPrompt

    prompt = ChatPrompt([_message({"type": "text", "text": "a"}, {"type": "text", "text": "b"})])
    engine = FakeEngine(accepts=False)
    prompt.floor(engine)
    prompt.token_ids(engine)
    assert engine.calls[-1][:2] == ("text", [{"role": "user", "content": "ab"}]) and prompt.images() is None


def test_chat_tools_system_prompt_with_image_parts():
    from server.protocol import ChatCompletionRequest
    from server.services.prompts import ChatPrompt

    request = ChatCompletionRequest(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, _image(data_url(encoded("PNG")))]}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
    engine = FakeEngine()
    ChatPrompt(request.messages, tools=request.tool_plan()).token_ids(engine)
    _, rendered, images, tools = engine.calls[-1]
    assert rendered[0]["role"] == "system" and "lookup" in rendered[0]["content"] and tools is None
    assert rendered[1]["content"][1] == {"type": "image"} and len(images) == 1

    engine.template_tool_format = lambda: "hermes"
    ChatPrompt(request.messages, tools=request.tool_plan()).token_ids(engine)
    _, rendered, images, tools = engine.calls[-1]
    assert rendered[0]["role"] == "user" and tools[0]["function"]["name"] == "lookup" and len(images) == 1


def test_chat_refusals_before_decoding():
    from server.protocol import ChatMessage
    from server.services.prompts import ChatPrompt

    prompt = ChatPrompt([_message(_image("data:image/png;base64,not-even-base64"))])
    error = refused(lambda: prompt.floor(FakeEngine(accepts=False)), "model_not_multimodal", "messages")
    assert "fake-vlm" in error.message
    refused(lambda: ChatPrompt([_message(_image(data_url(encoded("PNG"))))] * 3,
                               image_loader=ImageLoader(ImagePolicy(max_images=2))),
            "too_many_images", "messages[2].content[0].image_url")
    refused(lambda: ChatPrompt([_message({"type": "image_url"})]), "missing_required_parameter",
            "messages[0].content[0].image_url")
    # image parts only in user messages
    prompt = ChatPrompt([ChatMessage(role="system", content=[_image(data_url(encoded("PNG")))]),
                         ChatMessage(role="user", content="hi")])
    refused(lambda: prompt.token_ids(FakeEngine()), "unsupported_value", "messages[0].content[0].type")


def _response_request(**body):
    from server.protocol import ResponseRequest

    return ResponseRequest(model="m", **body)


def test_responses_input_image_parts_and_stored_turn():
    from server.services.response_input import ConversationPrompt

    red = data_url(encoded("PNG", color=(255, 0, 0)))
    req = _response_request(instructions="Look.", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What colour? "}, {"type": "input_image", "image_url": red, "detail": "low"}]}])
    prompt = ConversationPrompt(req, None, None)
    engine = FakeEngine()
    prompt.floor(engine)
    ids = prompt.token_ids(engine)
    kind, rendered, images, _ = engine.calls[-1]
    assert kind == "images" and len(ids) == 11 and type(ids) is list
    assert rendered == [{"role": "system", "content": "Look."},
                        {"role": "user", "content": [{"type": "text", "text": "What colour? "}, {"type": "image"}]}]
    assert images[0].detail == "low" and prompt.images() == {"prepared": [images[0].digest]}
    assert prompt.stored_turn() == [{"role": "user", "content": [
        {"type": "text", "text": "What colour? "}, {"type": "image", "image_url": red, "detail": "low"}]}]
    assert prompt.items[0]["content"][1] == {"type": "input_image", "image_url": red, "detail": "low"}


def test_responses_chain_resends_its_images():
    from server.services.response_input import ConversationPrompt

    red = data_url(encoded("PNG", color=(255, 0, 0)))
    first = ConversationPrompt(_response_request(input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": red}, {"type": "input_text", "text": "Colour?"}]}]), None, None)
    first.token_ids(FakeEngine())
    stored = [*first.stored_turn(), {"role": "assistant", "content": "Red."}]
    follow = ConversationPrompt(_response_request(input="And its shape?", previous_response_id="resp_1"), None,
                                lambda *_: stored)
    engine = FakeEngine()
    follow.floor(engine)  # the input itself has no images: no refusal here
    follow.token_ids(engine)
    kind, rendered, images, _ = engine.calls[-1]
    assert kind == "images" and len(images) == 1
    assert images[0].digest == hashlib.sha256(base64.b64decode(red.split(",", 1)[1])).hexdigest()
    assert rendered == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                        {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And its shape?"}]
    # the same chain on a model that takes no images
    follow = ConversationPrompt(_response_request(input="And its shape?", previous_response_id="resp_1"), None,
                                lambda *_: stored)
    refused(lambda: follow.token_ids(FakeEngine(accepts=False)), "model_not_multimodal", "previous_response_id")


def test_responses_chain_image_cap():
    from server.images import ImageLoader
    from server.services.response_input import ConversationPrompt

    red = data_url(encoded("PNG", color=(255, 0, 0)))
    turn = {"role": "user", "content": [{"type": "image", "image_url": red, "detail": "auto"}]}
    stored = [turn, {"role": "assistant", "content": "a"}, turn, {"role": "assistant", "content": "b"}]
    loader = ImageLoader(ImagePolicy(max_images=2))
    body = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": red}]}],
            "previous_response_id": "resp_1"}
    prompt = ConversationPrompt(_response_request(**body), None, lambda *_: stored, image_loader=loader)
    refused(lambda: prompt.token_ids(FakeEngine()), "too_many_images", "previous_response_id")
    prompt = ConversationPrompt(_response_request(**body, truncation="auto"), None, lambda *_: stored,
                                image_loader=loader)
    engine = FakeEngine()
    prompt.token_ids(engine)
    _, rendered, images, _ = engine.calls[-1]
    assert len(images) == 2 and rendered[0] == {"role": "assistant", "content": "a"}


def test_responses_refusals():
    from server.services.response_input import ConversationPrompt

    def prompt(*parts, loader=None):
        return ConversationPrompt(_response_request(input=[{"role": "user", "content": list(parts)}]), None, None,
                                  image_loader=loader)

    good = data_url(encoded("PNG"))
    refused(lambda: prompt({"type": "input_image", "image_url": good}).floor(FakeEngine(accepts=False)),
            "model_not_multimodal", "input")
    refused(lambda: prompt({"type": "input_image", "image_url": good, "detail": "max"}), "invalid_value",
            "input[0].content[0].detail")
    refused(lambda: prompt({"type": "input_image", "image_url": "http://example.com/a.png"}),
            "image_url_not_allowed", "input[0].content[0].image_url")
    refused(lambda: prompt({"type": "input_image"}), "missing_required_parameter", "input[0].content[0].image_url")
    refused(lambda: prompt({"type": "input_image", "file_id": "file-x", "image_url": good}), "invalid_value",
            "input[0].content[0].image_url")
    # a file id without a files API
    refused(lambda: prompt({"type": "input_image", "file_id": "file-x"}).token_ids(FakeEngine()),
            "unsupported_parameter", "input[0].content[0].file_id")
    refused(lambda: prompt({"type": "input_image", "image_url": data_url(SVG, "image/png")}).token_ids(FakeEngine()),
            "invalid_image_format", "input[0].content[0].image_url")
