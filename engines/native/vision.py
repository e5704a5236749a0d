"""Vision-language models on the native engine: the image half of a VLM, beside its text model.

A VLM's directory loads as transformers' `AutoModelForImageTextToText` with its `AutoProcessor` (the slow, PIL
image processors: no torchvision). The engine serves its language model as a plain causal LM that shares the
VLM's modules (`text_model`), so a text-only request runs exactly today's path (fused CPU layers, static decode
steps, the prefix cache as it is). What images add:

- `Vision.encode` (the server's CPU pool, before admission): the chat template renders each image part as the
  model's image marker, the processor expands it into the image's placeholder tokens (they count in the prompt)
  and turns the image into pixels. Each image becomes an `ImageSpan`: where its placeholders stand, its pixels,
  and its content digest.
- The prefix cache keys a block that holds an image's placeholders by the image's digest as well as its tokens
  (`Sequence.block_key`), so the same image in a follow-up turn hits the cache and another image behind the same
  text does not.
- At prefill (the step loop), the vision tower runs once per image, when a chunk first reaches its placeholders
  (`Vision.ready`, the step's images in one pass); then (`Vision.embed`) the chunk's rows at placeholders take the image's features, the others their token
  embeddings, and the text model runs on those embeddings. Features are dropped once the prompt passes the image.
- Gemma 3 attends bidirectionally among one image's tokens (transformers' `token_type_ids` mask at prefill). An
  image of such a model is therefore never cut by a prefill chunk: the scheduler ends a chunk before the image,
  or stretches it to the image's end (`Sequence.fit_chunk`, vLLM's disable_chunked_mm_input), and the prefill
  mask lets the image's tokens see each other (step_layout.py). A prefix-cache hit that ends inside an image is
  still exact: the cached blocks were computed with the whole image, and their digest says it was this one.
  Causal models (LLaVA) cut an image anywhere: a chunk takes the rows of the features it covers.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from engines.protocol import ImageInput, InvalidGenerationRequest

# Model types whose image tokens attend to each other both ways at prefill (transformers' token_type_ids mask).
BIDIRECTIONAL_IMAGE_MODELS = frozenset({"gemma3"})


@dataclass
class ImageSpan:
    start: int  # the first placeholder's position in the prompt
    end: int  # past the last
    digest: str  # the encoded image's sha256: the prefix cache's key for the blocks it touches
    pixels: dict[str, torch.Tensor]  # this image's processor outputs (pixel_values, and image_sizes where a model has)


@dataclass
class PreparedImages:
    """A request's images, as `encode` made them: handed to the engine in GenerationRequest.images."""

    spans: list[ImageSpan]
    bidirectional: bool
    features: dict[int, torch.Tensor] = field(default_factory=dict)  # span index -> [tokens, hidden], while needed


def is_vision_config(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def text_model_of(vlm: torch.nn.Module) -> torch.nn.Module:
    """The VLM's language model as a causal LM (transformers' class for its text config) sharing the VLM's
    modules: built on the meta device, then given the VLM's decoder and head, so it costs no memory of its own."""
    from transformers import AutoModelForCausalLM

    text_config = vlm.config.get_text_config()
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    decoder = getattr(getattr(vlm, "model", None), "language_model", None)
    if decoder is None or type(decoder) is not type(lm.model) or not hasattr(vlm.model, "get_image_features"):
        raise ValueError(f"{type(vlm).__name__} is not a vision-language model the native engine serves (its language "
                         "model must be a plain causal LM of transformers; tested: Gemma 3 and LLaVA); serve it with "
                         "engine: vllm")
    lm.model = decoder
    lm.lm_head = vlm.lm_head
    lm.generation_config = vlm.generation_config
    return lm.eval()


class Vision:
    """A VLM's image side: its processor, vision tower and projector (through the VLM's own
    `get_image_features`), and the placeholder token the processor expands."""

    def __init__(self, vlm: torch.nn.Module, processor, text_model: torch.nn.Module):
        self.vlm = vlm
        self.processor = processor
        self.embed_tokens = text_model.get_input_embeddings()
        config = vlm.config
        token = getattr(config, "image_token_id", None)  # (older configs name it image_token_index)
        self.image_token_id = int(token if token is not None else config.image_token_index)
        self.vocab_size = int(config.get_text_config().vocab_size)
        self.bidirectional = config.model_type in BIDIRECTIONAL_IMAGE_MODELS
        self.device = next(vlm.parameters()).device
        self.dtype = next(vlm.parameters()).dtype

    # ---- before admission (the server's CPU pool) -----------------------------------------------
    def encode(self, text: str, images: Seq[ImageInput]) -> tuple[list[int], PreparedImages]:
        """The rendered chat `text` (one image marker per image, in order) and its images -> the prompt's token ids,
        placeholders expanded, and its prepared images."""
        try:
            inputs = self.processor(text=[text], images=[[image.image for image in images]],
                                    add_special_tokens=False, return_tensors="pt")
        except ValueError as exc:  # e.g. the text holds image markers of its own: the counts disagree
            raise InvalidGenerationRequest(f"The images could not be matched to the prompt: {exc}",
                                           param="messages", code="invalid_image") from None
        ids = inputs["input_ids"][0].tolist()
        runs = _runs(ids, self.image_token_id)
        if len(runs) != len(images):
            raise InvalidGenerationRequest(
                f"The prompt holds {len(runs)} image placeholders for {len(images)} images; message text must not "
                "contain the model's image tokens.", param="messages", code="invalid_image")
        per_image = {name: value for name, value in inputs.items()
                     if name not in ("input_ids", "attention_mask", "token_type_ids")
                     and isinstance(value, torch.Tensor) and value.shape[:1] == (len(images),)}
        spans = [ImageSpan(start, end, image.digest, {name: value[i:i + 1] for name, value in per_image.items()})
                 for i, ((start, end), image) in enumerate(zip(runs, images))]
        return ids, PreparedImages(spans, self.bidirectional)

    # ---- at prefill (the step loop) ---------------------------------------------------------------
    def features(self, prepared: PreparedImages, index: int) -> torch.Tensor:
        """Image `index`'s features [placeholders, hidden], computed once (the vision tower and the projector)."""
        if index not in prepared.features:
            self._compute([(prepared, index)])
        return prepared.features[index]

    def _compute(self, images: list[tuple[PreparedImages, int]]) -> None:
        """One pass of the vision tower over several images whose processor outputs have the same shapes."""
        names = list(images[0][0].spans[images[0][1]].pixels)
        pixels = {}
        for name in names:
            value = torch.cat([prepared.spans[index].pixels[name] for prepared, index in images])
            pixels[name] = value.to(self.device, self.dtype if value.is_floating_point() else value.dtype)
        output = self.vlm.model.get_image_features(**pixels, return_dict=True).pooler_output
        per_image = list(output)  # a list (LLaVA) or a [images, tokens, hidden] tensor (Gemma 3): one entry an image
        if len(per_image) != len(images):
            raise RuntimeError(f"the vision tower gave {len(per_image)} outputs for {len(images)} images")
        for (prepared, index), rows in zip(images, per_image):
            rows = rows.reshape(-1, rows.shape[-1])
            span = prepared.spans[index]
            if rows.shape[0] != span.end - span.start:
                raise RuntimeError(f"the vision tower gave {rows.shape[0]} rows for {span.end - span.start} "
                                   "placeholders")
            prepared.features[index] = rows

    def ready(self, chunks: list) -> tuple[list, list]:
        """Compute the features of every image the step's chunks reach, in one pass of the vision tower for the
        images of the same shapes (as transformers batches them), each image once: the chunks whose images are
        ready, and (sequence, error) for those whose image failed, which fail alone (found image by image)."""
        wanted: dict[tuple[int, int], tuple[PreparedImages, int]] = {}
        needs: dict[int, list[tuple[int, int]]] = {}  # chunk -> the images it waits for
        for position, chunk in enumerate(chunks):
            seq, start = chunk.seq, chunk.seq.num_computed_tokens
            for index, _, _ in _reached(seq.images, start, start + chunk.num_tokens):
                if index not in seq.images.features:
                    key = (id(seq.images), index)
                    wanted[key] = (seq.images, index)
                    needs.setdefault(position, []).append(key)
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for key, (prepared, index) in wanted.items():
            shapes = tuple((name, tuple(value.shape)) for name, value in prepared.spans[index].pixels.items())
            groups.setdefault(shapes, []).append(key)
        errors: dict[tuple[int, int], Exception] = {}
        for keys in groups.values():
            try:
                self._compute([wanted[key] for key in keys])
            except Exception:  # noqa: BLE001 - one image's fault: find it
                for key in keys:
                    try:
                        self._compute([wanted[key]])
                    except Exception as exc:  # noqa: BLE001 - this request's own image
                        errors[key] = exc
        kept, failed = [], []
        for position, chunk in enumerate(chunks):
            error = next((errors[key] for key in needs.get(position, ()) if key in errors), None)
            if error is None:
                kept.append(chunk)
            else:
                failed.append((chunk.seq, error))
        return kept, failed

    def embed(self, pieces: list[tuple[PreparedImages | None, int, int, int]], tokens: list[int]) -> torch.Tensor | None:
        """The packed step's input embeddings [1, tokens, hidden], or None when no row is an image's.

        `pieces`: per scheduled chunk, (its sequence's images, its first position, its end, its offset in the
        packed row)."""
        rows, values = [], []
        for prepared, start, end, offset in pieces:
            for index, lo, hi in _reached(prepared, start, end):
                span = prepared.spans[index]
                rows.append(torch.arange(offset + lo - start, offset + hi - start))
                values.append(self.features(prepared, index)[lo - span.start:hi - span.start])
                if hi == span.end:  # the prompt is past this image: its features are done with
                    prepared.features.pop(index, None)
        if not rows:
            return None
        ids = torch.tensor([tokens], device=self.device)
        ids = ids.masked_fill(ids >= self.vocab_size, 0)  # an out-of-vocabulary placeholder (its row is replaced)
        embeds = self.embed_tokens(ids)
        embeds[0, torch.cat(rows).to(self.device)] = torch.cat(values).to(embeds.dtype)
        return embeds


def _reached(prepared: PreparedImages | None, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The images whose placeholders positions start..end-1 (a chunk) reach: (index, first, past the last) of the
    positions they share."""
    for index, span in enumerate(prepared.spans if prepared is not None else ()):
        low, high = max(span.start, start), min(span.end, end)
        if low < high:
            yield index, low, high


def _runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    """The [start, end) runs of `token` in `ids`."""
    runs, start = [], None
    for position, token_id in enumerate(ids):
        if token_id == token and start is None:
            start = position
        elif token_id != token and start is not None:
            runs.append((start, position))
            start = None
    if start is not None:
        runs.append((start, len(ids)))
    return runs


def image_groups(prepared: PreparedImages | None, length: int) -> torch.Tensor | None:
    """For a bidirectional model: each position's image (its index) or -1, over the first `length` positions."""
    if prepared is None or not prepared.bidirectional:
        return None
    groups = torch.full((length,), -1, dtype=torch.long)
    for index, span in enumerate(prepared.spans):
        if span.start < length:
            groups[span.start:min(span.end, length)] = index
    return groups
