"""Images in prompts (issue #38): a request's image part -> a checked, decoded `ImageInput` for the engine.

Two steps, so that a refusal costs as little as it can:

1. `image_ref` (cheap, on the event loop, before the model is even resolved): the part's shape. Its `detail`,
   where the image comes from (a `data:` URL, an uploaded file's id, or an http(s) URL, refused unless the
   operator started the server with --allow-image-urls: the server fetches nothing by default, air-gapped by
   design), a data URL's declared type and its encoded length against --max-image-mb, and the number of
   images in the request against --max-images-per-request.
2. `ImageLoader.load` (blocking: the CPU pool, after the model was found to take images and the request was
   admitted): the bytes (base64 decoded strictly, a file read, or a fetch with a size cap and a deadline),
   their real format read by Pillow (PNG, JPEG, WebP or GIF, whose first frame is taken; SVG, PDF or anything
   else refused, and a data URL's declared type must match the bytes), the pixel count read from the header
   before anything is decoded (`MAX_IMAGE_PIXELS`), then the decode (a truncated or corrupt image is refused)
   and the conversion to RGB.

Every refusal is a 400 whose `param` names the part, e.g. `messages[0].content[1].image_url.url` or
`input[0].content[2].file_id`; nothing here can end in a 500 or wait without a bound.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from PIL import Image, UnidentifiedImageError

from engines.protocol import ImageInput
from server.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from server.settings import Settings

# At most 50 megapixels an image (e.g. 8660x5773), read from its header before any pixel is decoded. Pillow's
# own decompression-bomb guard is set to the same bound: it warns past it and raises past twice it, so even a
# path that skipped our check could not allocate more than that. (The vision processors resize every image to
# their own input resolution, a megapixel or less, so nothing larger is of use to a model.)
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse such an image ourselves, with a 400

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGES = 16
FETCH_TIMEOUT_S = 10.0  # an allowed http(s) image: the whole fetch, connection to last byte
FETCH_REDIRECTS = 3
DETAILS = ("auto", "low", "high")
# Pillow's format name -> the MIME type a data URL declares for it
# (MPO: a JPEG holding several pictures, as some cameras write them; its first is the JPEG's own.)
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_OPENERS = ["PNG", "JPEG", "WEBP", "GIF"]  # Pillow's openers (its JPEG one opens MPO files too)
MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/apng": "image/png"}
IMAGE_PURPOSES = ("vision", "user_data")  # an uploaded file an image part may name
_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_SUPPORTED = "PNG, JPEG, WebP or GIF"


@dataclass(frozen=True)
class ImagePolicy:
    """The server's image limits (`ozwell serve` flags: --max-image-mb, --max-images-per-request,
    --allow-image-urls)."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # the encoded bytes of one image
    max_images: int = DEFAULT_MAX_IMAGES  # the image parts of one request
    allow_urls: bool = False  # fetch http(s) image URLs (off: air-gapped, the server fetches nothing)
    max_pixels: int = MAX_IMAGE_PIXELS
    fetch_timeout_s: float = FETCH_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        if settings.allow_image_urls:
            try:
                import httpx  # noqa: F401
            except ImportError:
                raise ValueError("--allow-image-urls needs httpx (pip install httpx)") from None
        return cls(max_bytes=settings.max_image_bytes, max_images=settings.max_images_per_request,
                   allow_urls=settings.allow_image_urls)

    @property
    def max_mb(self) -> str:
        mb = self.max_bytes / (1024 * 1024)
        return f"{mb:g} MB" if mb >= 1 else f"{self.max_bytes} bytes"


@dataclass(frozen=True)
class ImageRef:
    """An image part as the request gave it, its shape checked, nothing read or decoded yet."""

    param: str  # where its source stands: `...image_url.url`, `...image_url` or `...file_id`
    url: str | None = None
    file_id: str | None = None
    detail: str = "auto"

    def stored(self) -> dict:
        """The part as a stored response's conversation keeps it, so a chain re-sends the image."""
        source = {"image_url": self.url} if self.url is not None else {"file_id": self.file_id}
        return {"type": "image", **source, "detail": self.detail}


class ImageFiles(Protocol):
    def image_bytes(self, owner: str, file_id: str, max_bytes: int) -> bytes:
        """An uploaded image's bytes (raises NotFoundError, or a 400 for a file that may not be an image)."""


def _error(message: str, param: str, code: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def image_ref(policy: ImagePolicy, param: str, url: object = None, file_id: object = None, detail: object = None,
              detail_param: str | None = None, file_param: str | None = None) -> ImageRef:
    """Check an image part's shape (cheap: nothing is decoded). `param` names its URL, `file_param` its file id
    where the route takes one (the Responses API's input_image)."""
    if detail is None:
        detail = "auto"
    if detail not in DETAILS:
        raise _error(f"Invalid value for 'detail': {str(detail)[:32]!r}; use 'auto', 'low' or 'high'.",
                     detail_param or param, "invalid_value")
    if file_param is not None and file_id is not None:
        if url is not None:
            raise _error("An image part takes an image_url or a file_id, not both.", param, "invalid_value")
        if not isinstance(file_id, str) or not file_id:
            raise _error("file_id must be the id of a file uploaded to /v1/files.", file_param, "invalid_value")
        return ImageRef(param=file_param, file_id=file_id, detail=detail)
    if not isinstance(url, str) or not url:
        needs = "an image_url (a data: URL) or a file_id" if file_param is not None else "a url (a data: URL)"
        raise _error(f"An image part needs {needs}.", param, "missing_required_parameter")
    scheme = url[:8].lower()
    if scheme.startswith("data:"):
        _data_url_head(url, param, policy)
    elif scheme.startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise _error("This server does not fetch image URLs: it is air-gapped by design and fetches nothing. "
                         "Send the image inline as a base64 data: URL (data:image/png;base64,...)"
                         + (" or upload it to /v1/files (purpose 'vision') and send its file_id" if file_param
                            else "") + "; an operator may allow URLs with --allow-image-urls.",
                         param, "image_url_not_allowed")
    else:
        raise _error("An image URL must be a base64 data: URL (data:image/png;base64,...)"
                     + (" or an http(s) URL." if policy.allow_urls else "."), param, "invalid_image_url")
    return ImageRef(param=param, url=url, detail=detail)


def check_count(count: int, policy: ImagePolicy, param: str) -> None:
    if count > policy.max_images:
        raise _error(f"A request may hold at most {policy.max_images} images; this one holds more.", param,
                     "too_many_images")


def _data_url_head(url: str, param: str, policy: ImagePolicy) -> tuple[str, int]:
    """(the declared MIME type, where the base64 payload starts) of a data: URL, its encoded size bounded."""
    match = _DATA_URL.match(url[:256])  # the head only: its type and parameters are short
    if match is None:
        raise _error("A data: URL must look like data:image/png;base64,<base64 bytes>.", param, "invalid_image_url")
    params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
    if "base64" not in params:
        raise _error("An image data: URL must be base64-encoded (data:image/png;base64,...).", param,
                     "invalid_image_url")
    mime = MIME_ALIASES.get(match["mime"].strip().lower(), match["mime"].strip().lower())
    if mime not in FORMATS.values():
        raise _error(f"{_describe_mime(mime)} is not supported as an image; send a {_SUPPORTED} image.", param,
                     "invalid_image_format")
    encoded = len(url) - match.end()
    if encoded * 3 // 4 > policy.max_bytes + 2:  # before a byte is decoded (base64: 4 characters, 3 bytes)
        raise _error(f"The image is larger than this server's limit of {policy.max_mb} (--max-image-mb).", param,
                     "image_too_large")
    return mime, match.end()


def _describe_mime(mime: str) -> str:
    if mime == "image/svg+xml":
        return "SVG (a vector format)"
    if mime == "application/pdf":
        return "PDF (a document, not an image; upload it for file parts or vector stores instead)"
    return f"The type {mime!r}" if mime else "A data: URL without a type"


class ImageLoader:
    """Reads and decodes a request's images (blocking: run it on the CPU pool). The same source named by
    several parts is read and decoded once."""

    def __init__(self, policy: ImagePolicy, files: ImageFiles | None = None, owner: str = "local"):
        self.policy, self.files, self.owner = policy, files, owner
        self._decoded: dict[tuple[str, str], tuple[Image.Image, str]] = {}

    def load(self, ref: ImageRef) -> ImageInput:
        key = ("file", ref.file_id) if ref.file_id is not None else ("url", ref.url)
        if key not in self._decoded:
            data, declared = self._bytes(ref)
            self._decoded[key] = (decode_image(data, declared, ref.param, self.policy),
                                  hashlib.sha256(data).hexdigest())
        image, digest = self._decoded[key]
        return ImageInput(image=image, digest=digest, detail=ref.detail)

    def load_all(self, refs: list[ImageRef]) -> list[ImageInput]:
        return [self.load(ref) for ref in refs]

    def _bytes(self, ref: ImageRef) -> tuple[bytes, str | None]:
        if ref.file_id is not None:
            return self._file(ref), None
        if ref.url[:5].lower() == "data:":
            mime, start = _data_url_head(ref.url, ref.param, self.policy)
            try:
                data = base64.b64decode(ref.url[start:], validate=True)
            except (binascii.Error, ValueError):
                raise _error("The image's data: URL is not valid base64.", ref.param, "invalid_image") from None
            return data, mime
        if not self.policy.allow_urls:  # (a stored chain's URL, from before the operator turned them off)
            raise _error("This server does not fetch image URLs (air-gapped by design); send the image as a "
                         "base64 data: URL.", ref.param, "image_url_not_allowed")
        return fetch_image(ref.url, ref.param, self.policy), None

    def _file(self, ref: ImageRef) -> bytes:
        if self.files is None:
            raise _error("An image file_id needs the files API, which this server runs without; send the image as "
                         "a data: URL.", ref.param, "unsupported_parameter")
        try:
            return self.files.image_bytes(self.owner, ref.file_id, self.policy.max_bytes)
        except NotFoundError:
            raise _error(f"No such file: {ref.file_id}.", ref.param, "file_not_found") from None
        except InvalidRequestError as exc:
            exc.param = ref.param
            raise


def decode_image(data: bytes, declared: str | None, param: str, policy: ImagePolicy) -> Image.Image:
    """Encoded bytes -> an RGB image (its first frame), or a 400 naming `param`: not a PNG, JPEG, WebP or GIF
    (or not the type its data: URL declared), over the bytes or pixel cap, corrupt or truncated."""
    if len(data) > policy.max_bytes:
        raise _error(f"The image is larger than this server's limit of {policy.max_mb} (--max-image-mb).", param,
                     "image_too_large")
    if not data:
        raise _error("The image is empty.", param, "invalid_image")
    try:
        image = Image.open(io.BytesIO(data), formats=_OPENERS)
    except Image.DecompressionBombError:
        raise _pixels_error(None, param, policy) from None
    except UnidentifiedImageError:
        raise _error(f"The image is {_sniff(data)}, not a {_SUPPORTED} image.", param, "invalid_image_format") from None
    except Exception:  # noqa: BLE001 - a malformed header: Pillow raises whatever its parser met
        raise _error("The image is corrupt: its header could not be read.", param, "invalid_image") from None
    try:
        actual = FORMATS.get(image.format or "")
        if actual is None:
            raise _error(f"The image is {image.format}, not a {_SUPPORTED} image.", param, "invalid_image_format")
        if declared is not None and declared != actual:
            raise _error(f"The data: URL says {declared} but the bytes are a {actual} image.",
                         param, "invalid_image_format")
        width, height = image.size
        if width <= 0 or height <= 0:
            raise _error("The image has no pixels.", param, "invalid_image")
        if width * height > policy.max_pixels:  # from the header: nothing decoded yet
            raise _pixels_error((width, height), param, policy)
        try:
            image.seek(0)  # an animation's first frame
            image.load()
            if image.size[0] * image.size[1] > policy.max_pixels:  # a GIF frame may enlarge the canvas
                raise _pixels_error(image.size, param, policy)
            return image.convert("RGB")
        except InvalidRequestError:
            raise
        except Image.DecompressionBombError:
            raise _pixels_error((width, height), param, policy) from None
        except Exception:  # noqa: BLE001 - truncated data, a bad chunk or checksum: Pillow raises many kinds
            raise _error("The image is corrupt or truncated: it could not be decoded.", param,
                         "invalid_image") from None
    finally:
        image.close()


def _pixels_error(size: tuple[int, int] | None, param: str, policy: ImagePolicy) -> InvalidRequestError:
    what = f" ({size[0]}x{size[1]})" if size else ""
    return _error(f"The image{what} has more than this server's limit of {policy.max_pixels} pixels.", param,
                  "image_too_large")


def _sniff(data: bytes) -> str:
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head) or b"<svg" in head[:256]:
        return "an SVG (vector) image"
    return "of an unrecognised format"


def fetch_image(url: str, param: str, policy: ImagePolicy) -> bytes:
    """GET an http(s) image (only with --allow-image-urls): at most `max_bytes`, the whole fetch within
    `fetch_timeout_s`, at most FETCH_REDIRECTS redirects, to http(s) URLs only. Blocking."""
    import httpx

    deadline = time.monotonic() + policy.fetch_timeout_s
    too_large = _error(f"The image at the URL is larger than this server's limit of {policy.max_mb} "
                       "(--max-image-mb).", param, "image_too_large")
    try:
        with httpx.Client(timeout=policy.fetch_timeout_s, follow_redirects=True, max_redirects=FETCH_REDIRECTS,
                          trust_env=False) as client, \
                client.stream("GET", url, headers={"Accept": "image/png, image/jpeg, image/webp, image/gif"}) as reply:
            if reply.status_code != 200:
                raise _error(f"Fetching the image failed: the server at its URL answered {reply.status_code}.",
                             param, "image_fetch_failed")
            length = reply.headers.get("content-length", "")
            if length.isdigit() and int(length) > policy.max_bytes:
                raise too_large
            chunks, total = [], 0
            for chunk in reply.iter_bytes():
                total += len(chunk)
                if total > policy.max_bytes:
                    raise too_large
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("deadline")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise _error(f"Fetching the image took longer than {policy.fetch_timeout_s:g} s.", param,
                     "image_fetch_failed") from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise _error(f"Fetching the image failed: {type(exc).__name__}.", param, "image_fetch_failed") from None
