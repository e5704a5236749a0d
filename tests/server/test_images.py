"""Images in chat completions and the Responses API through the real app, on the tiny text models: every refusal
of an image part (status, OpenAI's error shape, code, param), before it can cost a 500 or a stalled engine.

The model is a text model: it refuses images with a 400 naming it. For the checks that come after that one (the
image's bytes), the test makes its engine say it takes images, and records what `encode_chat_images` is given
instead of running a vision tower (that path is the native engine's tests', on tiny vision models)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
import time

import pytest

from tests.server.test_auth import as_key
from tests.server.test_images_decode import (
    PDF,
    SVG,
    bomb_png,
    data_url,
    encoded,
    noise_png,
)

MODEL = "tiny-llama-256"


def assert_error(response, code: str, param: str, status: int = 400) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param), error
    assert error["message"]
    return error["message"]


def chat(client, *parts, model=MODEL, **body):
    return client.post("/v1/chat/completions", json={
        "model": model, "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]}], **body})


def respond(client, *parts, model=MODEL, **body):
    return client.post("/v1/responses", json={
        "model": model, "max_output_tokens": 16, "temperature": 0,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, *parts]}], **body})


def image(url: str, detail: str | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


PNG = data_url(encoded("PNG"))


@pytest.fixture
def policy(app, monkeypatch):
    """Set the server's image limits for one test, as `ozwell serve`'s flags would."""
    services = app.state.services

    def set_policy(**limits):
        for service in (services.chat, services.responses):
            monkeypatch.setattr(service, "images", dataclasses.replace(service.images, **limits))
    return set_policy


@pytest.fixture
def vision(app, client, monkeypatch):
    """The tiny model's engine says it takes images; what encode_chat_images is given is recorded, and the prompt
    it returns is a short text one (no prepared images), so the request runs as a text request."""
    engine = app.state.services.registry.resolve(MODEL)
    seen: list[tuple[list[dict], list]] = []

    def encode_chat_images(self, messages, images, tools=None):
        seen.append((messages, list(images)))
        return self.encode_chat([{"role": "user", "content": "Describe the image."}]), None

    monkeypatch.setattr(type(engine), "accepts_images", property(lambda self: True))
    monkeypatch.setattr(type(engine), "encode_chat_images", encode_chat_images)
    return seen


# ---- refused before anything is decoded -------------------------------------------------------------------------
def test_a_text_model_refuses_images_naming_it(client):
    message = assert_error(chat(client, image(PNG)), "model_not_multimodal", "messages")
    assert MODEL in message
    message = assert_error(respond(client, {"type": "input_image", "image_url": PNG}), "model_not_multimodal", "input")
    assert MODEL in message
    # not even the bytes are looked at: a broken image gets the same answer
    assert_error(chat(client, image("data:image/png;base64,@@@")), "model_not_multimodal", "messages")


def test_http_urls_are_refused_air_gapped(client):
    message = assert_error(chat(client, image("https://example.com/cat.png")), "image_url_not_allowed",
                           "messages[0].content[1].image_url.url")
    assert "air-gapped" in message and "--allow-image-urls" in message
    assert_error(respond(client, {"type": "input_image", "image_url": "http://example.com/cat.png"}),
                 "image_url_not_allowed", "input[0].content[1].image_url")


def test_bad_detail(client):
    assert_error(chat(client, image(PNG, "ultra")), "invalid_value", "messages[0].content[1].image_url.detail")
    assert_error(respond(client, {"type": "input_image", "image_url": PNG, "detail": "ultra"}), "invalid_value",
                 "input[0].content[1].detail")


def test_too_many_images(client, policy):
    policy(max_images=2)
    assert_error(chat(client, image(PNG), image(PNG), image(PNG)), "too_many_images", "messages[0].content[3]"
                 ".image_url")
    parts = [{"type": "input_image", "image_url": PNG}] * 3
    assert_error(respond(client, *parts), "too_many_images", "input[0].content[3]")


def test_svg_and_pdf_types(client):
    param = "messages[0].content[1].image_url.url"
    assert "SVG" in assert_error(chat(client, image(data_url(SVG, "image/svg+xml"))), "invalid_image_format", param)
    assert "PDF" in assert_error(chat(client, image(data_url(PDF, "application/pdf"))), "invalid_image_format", param)


def test_over_max_image_mb_before_decoding(client, policy):
    policy(max_bytes=1000)
    assert "--max-image-mb" in assert_error(chat(client, image(data_url(noise_png()))), "image_too_large",
                                            "messages[0].content[1].image_url.url")


# ---- refused when read (a model that takes images) --------------------------------------------------------------
PARAM = "messages[0].content[1].image_url.url"


@pytest.mark.parametrize("url,code,says", [
    ("data:image/png;base64,iVBORw0KGgo*AAA", "invalid_image", "base64"),
    (data_url(SVG, "image/png"), "invalid_image_format", "SVG"),
    (data_url(PDF, "image/png"), "invalid_image_format", "PDF"),
    (data_url(noise_png()[:1500]), "invalid_image", "truncated"),
    (data_url(bomb_png()), "image_too_large", "pixels"),
    (data_url(encoded("JPEG"), "image/webp"), "invalid_image_format", "image/jpeg"),
], ids=["base64", "svg", "pdf", "truncated", "bomb", "mismatch"])
def test_bad_images_are_400s(client, vision, url, code, says):
    assert says in assert_error(chat(client, image(PNG), image(url)), code, "messages[0].content[2].image_url.url")
    assert says in assert_error(respond(client, {"type": "input_image", "image_url": url}), code,
                                "input[0].content[1].image_url")
    assert vision == []  # the engine never saw them
    assert chat(client, image(PNG)).status_code == 200  # and it still answers


def test_good_images_reach_the_engine(client, vision):
    jpeg, gif = encoded("JPEG", color=(0, 0, 255)), encoded("GIF", mode="P", color=1)
    response = chat(client, image(PNG, "low"), {"type": "text", "text": " and "},
                    image(data_url(jpeg, "image/jpeg")), image(data_url(gif, "image/gif"), "high"))
    assert response.status_code == 200, response.text
    messages, images = vision[-1]
    assert messages == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image"}, {"type": "text", "text": " and "},
        {"type": "image"}, {"type": "image"}]}]
    assert [i.detail for i in images] == ["low", "auto", "high"]
    assert images[1].digest == hashlib.sha256(jpeg).hexdigest()
    assert all(i.image.mode == "RGB" for i in images)


# ---- file ids (the Responses API's input_image) -----------------------------------------------------------------
def _upload(client, data: bytes, purpose: str, name: str = "photo.png") -> str:
    response = client.post("/v1/files", files={"file": (name, data, "image/png")}, data={"purpose": purpose})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_image_file_ids(client, app, vision):
    png = encoded("PNG", color=(0, 255, 0))
    vision_file, user_file, batch_file = (_upload(client, png, "vision"), _upload(client, png, "user_data"),
                                          _upload(client, png, "assistants"))
    param = "input[0].content[1].file_id"
    response = respond(client, {"type": "input_image", "file_id": vision_file},
                       {"type": "input_image", "file_id": user_file, "detail": "high"})
    assert response.status_code == 200, response.text
    assert [i.digest for i in vision[-1][1]] == [hashlib.sha256(png).hexdigest()] * 2
    assert "vision" in assert_error(respond(client, {"type": "input_image", "file_id": batch_file}),
                                    "invalid_file_purpose", param)
    assert_error(respond(client, {"type": "input_image", "file_id": "file-" + "0" * 32}), "file_not_found", param)
    other = app.state.services.keys.create(name="img-other", owner="img-other-owner")[1]
    with as_key(client, other):  # another owner's file: as if it did not exist
        assert_error(respond(client, {"type": "input_image", "file_id": vision_file}), "file_not_found", param)
    text = _upload(client, b"not an image at all", "vision", "notes.png")
    assert_error(respond(client, {"type": "input_image", "file_id": text}), "invalid_image_format", param)


def test_an_image_file_over_max_image_mb(client, vision, policy):
    big = _upload(client, noise_png(), "vision")
    policy(max_bytes=1000)
    assert "--max-image-mb" in assert_error(respond(client, {"type": "input_image", "file_id": big}),
                                            "image_too_large", "input[0].content[1].file_id")


def test_a_chain_sends_its_images_again(client, vision):
    png = encoded("PNG", color=(9, 9, 9))
    first = respond(client, {"type": "input_image", "image_url": data_url(png), "detail": "low"})
    assert first.status_code == 200, first.text
    items = client.get(f"/v1/responses/{first.json()['id']}/input_items").json()["data"]
    assert items[0]["content"][1] == {"type": "input_image", "image_url": data_url(png), "detail": "low"}
    follow = client.post("/v1/responses", json={"model": MODEL, "max_output_tokens": 16, "input": "And now?",
                                                "previous_response_id": first.json()["id"]})
    assert follow.status_code == 200, follow.text
    messages, images = vision[-1]
    assert [(i.digest, i.detail) for i in images] == [(hashlib.sha256(png).hexdigest(), "low")]
    assert messages[0]["content"][1] == {"type": "image"} and messages[-1] == {"role": "user", "content": "And now?"}


# ---- --allow-image-urls -----------------------------------------------------------------------------------------
@pytest.fixture
def image_server():
    """A local http server: /ok.png an image, /big.png a larger one, /slow.png one that stalls, anything else
    404."""
    small, big = encoded("PNG", color=(1, 2, 3)), noise_png((200, 200))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow.png":  # the headers, a few bytes, then nothing
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(small[:16])
                self.wfile.flush()
                time.sleep(5)
                return
            body = {"/ok.png": small, "/big.png": big}.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.block_on_close = True, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", small
    server.shutdown()
    server.server_close()


def test_allowed_urls_are_fetched_with_a_cap(client, vision, policy, image_server):
    base, small = image_server
    policy(allow_urls=True, max_bytes=20_000)
    response = chat(client, image(f"{base}/ok.png"))
    assert response.status_code == 200, response.text
    assert vision[-1][1][0].digest == hashlib.sha256(small).hexdigest()
    assert_error(chat(client, image(f"{base}/big.png")), "image_too_large", PARAM)
    assert "404" in assert_error(chat(client, image(f"{base}/missing.png")), "image_fetch_failed", PARAM)
    policy(fetch_timeout_s=1.0)
    started = time.monotonic()
    assert "1 s" in assert_error(chat(client, image(f"{base}/slow.png")), "image_fetch_failed", PARAM)
    assert time.monotonic() - started < 4


# ---- the flags --------------------------------------------------------------------------------------------------
def test_serve_flags_reach_the_policy():
    from server.cli import _parser
    from server.images import ImagePolicy
    from server.settings import Settings

    args = _parser().parse_args(["serve", "--max-image-mb", "1.5", "--max-images-per-request", "3",
                                 "--allow-image-urls"])
    assert (args.max_image_mb, args.max_images_per_request, args.allow_image_urls) == (1.5, 3, True)
    policy = ImagePolicy.from_settings(Settings(max_image_bytes=int(1.5 * 1024 * 1024), max_images_per_request=3,
                                                allow_image_urls=True))
    assert (policy.max_bytes, policy.max_images, policy.allow_urls) == (1572864, 3, True)
    defaults = _parser().parse_args(["serve"])
    assert (defaults.max_image_mb, defaults.max_images_per_request, defaults.allow_image_urls) == (20.0, 16, False)
    assert ImagePolicy.from_settings(Settings()) == ImagePolicy()


def test_the_app_gives_its_services_the_settings_limits(tmp_path, tiny_config_dir):
    from engines.registry import EngineRegistry
    from server.app import create_app
    from server.settings import Settings

    settings = Settings(config_dir=tiny_config_dir, data_dir=tmp_path / "data", max_image_bytes=1000,
                        max_images_per_request=2)
    from server.db.database import open_database

    app = create_app(settings, EngineRegistry.from_config_dir(tiny_config_dir, tmp_path / "data"),
                     database=open_database(None, tmp_path / "data"))
    services = app.state.services
    assert services.chat.images.max_bytes == services.responses.images.max_bytes == 1000
    assert services.chat.images.max_images == services.responses.images.max_images == 2
