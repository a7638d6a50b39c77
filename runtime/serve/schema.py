"""Request bodies -> validated rows; every refusal is one ``BadRequest`` naming the field.

Inputs accepted by ``POST /v1/embeddings`` (``input``), one row each:

* a string (text), or, with ``"modality": "image"`` (infinity's form), an image reference;
* a list of content parts: ``{"type": "text", "text": ...}`` and
  ``{"type": "image_url", "image_url": {"url": ...}}`` (OpenAI / vLLM; ``image_url`` may also be
  the string itself); a native-resolution artifact also takes several images per row and
  one ``{"type": "video_url", "video_url": {"url": ...}}`` (``lame_runtime.serve.visuals``),
  a fixed-size one a single image;
* an object ``{"text": ..., "image": ..., "video": ...}`` (any of them; ``image`` may be a list).

``input_type`` (``POST /v1/embeddings`` and ``POST /v1/search``): ``"query"`` (default: the
trained query instruction of each row's modality) or ``"document"`` (the document instruction,
what indexes are built with). An image->image search needs ``"document"``: as a query an image
is embedded for image->text retrieval (docs/serving-guarantees.md says why the default stays).

Image references: ``data:image/...;base64,...`` URIs; local paths (or ``file://``) only under
``--image-root``, opened once by ``lame_runtime.inputs.images.open_under``; remote URLs are
refused (the service fetches nothing). Images are decoded here, off the event loop, through
``lame_runtime.inputs.images.load_image`` (its pixel limit guards against decompression bombs)
and resized to the model's input, so a queued row holds a few KB, not a 24 MP photo.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lame_runtime.errors import InputError, IntegrityError, MissingFileError
from lame_runtime.inputs.images import (
    _RESAMPLE,
    PIL_ERRORS,
    ImageConfig,
    default_max_pixels,
    load_image,
    open_under,
)
from lame_runtime.inputs.preprocess import check_unicode
from lame_runtime.serve.boundary import json_kind
from lame_runtime.serve.config import ServeConfig
from lame_runtime.serve.errors import BadRequest, NotFound

log = logging.getLogger("lame_runtime.serve")

_DATA_URI = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)"
    r"(?P<b64>;base64)?,(?P<data>.*)$",
    re.S,
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
ENCODINGS = ("float", "base64")
INPUT_TYPES = ("query", "document")


@dataclass
class LocalImage:
    """An image path under ``--image-root``, as the client sent it (relative to the root).

    It is opened once, by ``decode``, confined and race-free (``open_under``); errors name
    ``where`` and ``sent``, never the server-side path."""

    relative: str
    sent: str
    where: str


@dataclass
class VideoData:
    """A video sent as a data URI: its bytes (decoded by ``visuals``, which needs PyAV)."""

    data: bytes
    where: str


@dataclass
class Row:
    """One embedding row: text and/or an image reference (decoded later by ``decode``).

    ``images``: every image of the row in the order given (``image`` is the first); ``video``:
    its video (``lame_runtime.serve.visuals``). Only a native-resolution artifact takes more
    than ``image``; at native resolution ``image`` becomes the row's decoded visuals."""

    text: str | None
    image: Any = None  # bytes (a data URI) or a LocalImage; a PIL image once decoded
    where: str = "input"
    images: list[Any] = field(default_factory=list)
    video: Any = None

    def __post_init__(self) -> None:
        if self.image is not None and not self.images:
            self.images = [self.image]


@dataclass
class EmbedRequest:
    rows: list[Row]
    model: str
    encoding_format: str = "float"
    dimensions: int | None = None
    input_type: str = "query"
    instruction: str | None = None
    task: str | None = None


def _kind(value: Any) -> str:
    return json_kind(value)


def _field(
    body: dict[str, Any],
    name: str,
    kinds: tuple[type, ...],
    default: Any = None,
    required: bool = False,
    what: str | None = None,
) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise BadRequest(f"missing required field {name!r}", code="missing_field")
        return default
    value = body[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise BadRequest(
            f"field {name!r} must be {what or ' or '.join(_kind_name(k) for k in kinds)}, got {_kind(value)}",
            code="invalid_type",
        )
    return value


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        list: "an array",
        dict: "an object",
        bool: "a boolean",
        float: "a number",
    }[kind]


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _field(body, name, (str,), default)
    if value not in choices:
        raise BadRequest(
            f"field {name!r} must be one of {list(choices)}, got {value!r}", code="invalid_value"
        )
    return str(value)


def check_model(body: dict[str, Any], served: str, required: bool = True) -> str:
    model = _field(body, "model", (str,), None, required=required)
    if model is not None and model != served:
        raise NotFound(
            f"model {model!r} is not served here; this server serves {served!r} (GET /v1/models)",
            code="model_not_found",
        )
    return served


def parse_embeddings(
    body: dict[str, Any], served: str, supported: tuple[int, ...], config: ServeConfig
) -> EmbedRequest:
    """``supported``: the sizes the artifact serves, its full size included
    (``Artifact.dimensions``)."""
    model = check_model(body, served)
    encoding = _choice(body, "encoding_format", ENCODINGS, "float")
    input_type = _choice(body, "input_type", INPUT_TYPES, _choice(body, "role", INPUT_TYPES, "query"))
    dimensions = _field(body, "dimensions", (int,))
    if dimensions is not None and dimensions not in supported:
        raise BadRequest(
            f"dimensions={dimensions} is not supported by model {served!r}: it "
            f"gives {list(supported)} (the artifact's manifest lists no other "
            "Matryoshka dimensions)"
            if len(supported) == 1
            else f"dimensions={dimensions} is not supported by model {served!r}; "
            f"choose one of {list(supported)}",
            code="unsupported_dimensions",
        )
    modality = _choice(body, "modality", ("text", "image"), "text")
    raw = body.get("input")
    if raw is None:
        raise BadRequest("missing required field 'input'", code="missing_field")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise BadRequest(f"field 'input' must be a string or an array, got {_kind(raw)}", code="invalid_type")
    if not items:
        raise BadRequest("field 'input' is empty: give at least one item", code="empty_input")
    if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise BadRequest(
            "token-id input is not supported: send text (the server tokenises "
            "it with the model's own tokenizer)",
            code="invalid_input",
        )
    if len(items) > config.max_items:
        raise BadRequest(
            f"field 'input' has {len(items)} items; at most {config.max_items} per request (--max-items)",
            code="too_many_items",
        )
    rows = [parse_item(item, f"input[{i}]", config, modality) for i, item in enumerate(items)]
    return EmbedRequest(
        rows,
        model,
        encoding,
        dimensions,
        input_type,
        _field(body, "instruction", (str,)),
        _field(body, "task", (str,)),
    )


def parse_item(item: Any, where: str, config: ServeConfig, modality: str = "text") -> Row:
    """One input element (string, content-part list or {text, image} object) -> ``Row``."""
    if isinstance(item, str):
        return (
            Row(None, image_source(item, where, config), where)
            if modality == "image"
            else Row(check_text(item, where, config), None, where)
        )
    if isinstance(item, dict) and "type" in item:
        item = [item]
    if isinstance(item, list):
        texts, images, videos = [], [], []
        for j, part in enumerate(item):
            at = f"{where}[{j}]"
            if not isinstance(part, dict):
                raise BadRequest(
                    f"{at} must be a content part object "
                    f"({{'type': 'text' | 'image_url', ...}}), got {_kind(part)}",
                    code="invalid_type",
                )
            kind = part.get("type")
            if kind == "text":
                texts.append(check_text(part.get("text"), f"{at}.text", config))
            elif kind in ("image_url", "image"):
                ref = part.get(kind)
                ref = ref.get("url") if isinstance(ref, dict) else ref
                images.append(image_source(ref, f"{at}.{kind}", config))
            elif kind in ("video_url", "video"):
                ref = part.get(kind)
                ref = ref.get("url") if isinstance(ref, dict) else ref
                videos.append(video_source(ref, f"{at}.{kind}", config))
            else:
                raise BadRequest(
                    f"{at}.type must be 'text', 'image_url' or 'video_url', got {kind!r}",
                    code="invalid_value",
                )
        if not texts and not images and not videos:
            raise BadRequest(f"{where} has no content parts", code="empty_input")
        return visual_row(" ".join(texts) if texts else None, images, videos, where, config)
    if isinstance(item, dict):
        unknown = set(item) - {"text", "image", "video"}
        if unknown or not item:
            raise BadRequest(
                f"{where} must have 'text', 'image' and/or 'video' (got keys {sorted(item)})",
                code="invalid_input",
            )
        text = check_text(item["text"], f"{where}.text", config) if item.get("text") is not None else None
        given = item.get("image")
        if isinstance(given, list):
            images = [image_source(ref, f"{where}.image[{j}]", config) for j, ref in enumerate(given)]
        else:
            images = [image_source(given, f"{where}.image", config)] if given is not None else []
        videos = (
            [video_source(item["video"], f"{where}.video", config)] if item.get("video") is not None else []
        )
        if text is None and not images and not videos:
            raise BadRequest(f"{where} has neither text nor image nor video", code="empty_input")
        return visual_row(text, images, videos, where, config)
    raise BadRequest(
        f"{where} must be a string, a list of content parts or an object with "
        f"'text'/'image'/'video', got {_kind(item)}",
        code="invalid_type",
    )


def visual_row(
    text: str | None, images: list[Any], videos: list[Any], where: str, config: ServeConfig
) -> Row:
    """A row's parts -> ``Row``, within the per-item limits (whether the model takes several
    images or a video is checked against the artifact: ``visuals.check_rows``)."""
    if len(images) > config.max_images_per_item:
        raise BadRequest(
            f"{where} has {len(images)} images; at most {config.max_images_per_item} per item "
            "(--max-images-per-item)",
            code="too_many_images",
        )
    if len(videos) > 1:
        raise BadRequest(
            f"{where} has {len(videos)} videos; the model embeds one video per item "
            "(send them as separate items)",
            code="too_many_videos",
        )
    return Row(text, images[0] if images else None, where, images, videos[0] if videos else None)


def check_text(text: Any, where: str, config: ServeConfig) -> str:
    if not isinstance(text, str):
        raise BadRequest(f"{where} must be a string, got {_kind(text)}", code="invalid_type")
    if not text.strip():
        raise BadRequest(f"{where} is an empty text", code="empty_input")
    if len(text) > config.max_text_chars:
        raise BadRequest(
            f"{where} has {len(text):,} characters; at most {config.max_text_chars:,} (--max-text-chars)",
            code="text_too_long",
        )
    try:
        check_unicode(text, where)
    except InputError as err:
        raise BadRequest(str(err), code="invalid_input") from None
    return text


def image_source(ref: Any, where: str, config: ServeConfig) -> bytes | LocalImage:
    """A data URI -> its bytes; a local path -> a ``LocalImage``; anything else refused."""
    if not isinstance(ref, str) or not ref:
        raise BadRequest(
            f"{where} must be a data URI or an image path string, got {_kind(ref)}", code="invalid_type"
        )
    if ref.startswith("data:"):
        match = _DATA_URI.match(ref)
        if match is None or not match["b64"]:
            raise BadRequest(
                f"{where}: only base64 data URIs are accepted (data:image/png;base64,...)",
                code="invalid_image",
            )
        if match["type"] and not match["type"].startswith("image/"):
            raise BadRequest(
                f"{where}: data URI media type {match['type']!r} is not an image", code="invalid_image"
            )
        try:
            return base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadRequest(
                f"{where}: the data URI is not valid base64 ({err})", code="invalid_base64"
            ) from None
    return local_source(ref, where, config, "image")


def video_source(ref: Any, where: str, config: ServeConfig) -> VideoData | LocalImage:
    """A video reference -> ``VideoData`` (a data URI's bytes) or a ``LocalImage`` (a
    video file or a folder of frames under ``--image-root``)."""
    if not isinstance(ref, str) or not ref:
        raise BadRequest(
            f"{where} must be a data URI or a video path string, got {_kind(ref)}", code="invalid_type"
        )
    if ref.startswith("data:"):
        match = _DATA_URI.match(ref)
        if match is None or not match["b64"]:
            raise BadRequest(
                f"{where}: only base64 data URIs are accepted (data:video/mp4;base64,...)",
                code="invalid_video",
            )
        if not (match["type"] or "").startswith("video/"):
            raise BadRequest(
                f"{where}: data URI media type {match['type']!r} is not a video (video/mp4, ...)",
                code="invalid_video",
            )
        try:
            return VideoData(base64.b64decode(match["data"], validate=True), where)
        except (binascii.Error, ValueError) as err:
            raise BadRequest(
                f"{where}: the data URI is not valid base64 ({err})", code="invalid_base64"
            ) from None
    return local_source(ref, where, config, "video")


def local_source(ref: str, where: str, config: ServeConfig, kind: str) -> LocalImage:
    """A local path (or ``file://``) confined to ``--image-root``; URLs and other paths refused."""
    sent = ref
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif _SCHEME.match(ref):
        raise BadRequest(
            f"{where}: remote {kind} URLs are refused ({ref.split('://')[0]}://): "
            f"this server fetches nothing; send the {kind} as a data URI",
            code="remote_url_refused",
        )
    root = config.image_root
    if root is None:
        raise BadRequest(
            f"{where}: local {kind} paths are refused: the server was started "
            f"without --image-root; send the {kind} as a data URI",
            code="local_path_refused",
        )
    if ref.startswith("/"):
        # An absolute path inside the root (as given, or its real path) is taken relative to
        # it, by its text: the client's path is never resolved outside the root.
        for base in dict.fromkeys((str(root), os.path.realpath(root))):
            base = base.rstrip("/") + "/"
            if ref.startswith(base):
                ref = ref[len(base) :]
                break
        else:
            raise IntegrityError(f"{where}: {kind} path {_shown(sent)} is outside --image-root")
    return LocalImage(ref, sent, where)


def _shown(path: str) -> str:
    return repr(path) if len(path) <= 80 else repr(path[:60]) + f"... ({len(path)} characters)"


def decode(rows: list[Row], cfg: ImageConfig, max_pixels: int | None, root: Path | None = None) -> None:
    """Decode every row's image in place (PIL RGB at the model's resolution); blocking."""
    limit = max_pixels or default_max_pixels(cfg)
    for row in rows:
        if row.image is None:
            continue
        if isinstance(row.image, LocalImage):
            img = _decode_local(row.image, root, limit)
        else:
            img = _decode_bytes(row.image, row.where, limit)
        # The preprocessor resizes the same way (image_to_array); doing it here keeps queued
        # rows small and the result identical.
        if img.size != (cfg.width, cfg.height):
            img = img.resize((cfg.width, cfg.height), _RESAMPLE[cfg.resample])
        row.image = img


def _decode_bytes(data: bytes, where: str, limit: int) -> Image.Image:
    try:
        opened = Image.open(io.BytesIO(data))  # lazy: the header only
    except PIL_ERRORS as err:
        raise BadRequest(
            f"{where}: the data is not an image Pillow can read ({type(err).__name__}: {err})",
            code="invalid_image",
        ) from None
    try:
        return load_image(opened, limit)
    except (InputError, MissingFileError) as err:
        raise type(err)(f"{where}: {err}") from None


def _decode_local(ref: LocalImage, root: Path | None, limit: int) -> Image.Image:
    if root is None:  # image_source refuses paths without a root; this is a bug if reached
        raise BadRequest(f"{ref.where}: local image paths are refused", code="local_path_refused")
    what = f"{ref.where}: image path"
    try:
        handle = open_under(root, ref.relative, what, "--image-root", ref.sent)
    except (InputError, MissingFileError, IntegrityError) as err:
        log.info("refused %s (root %s): %s", ref.where, root, err)
        raise
    with handle:
        try:
            return load_image(handle, limit)
        except (InputError, MissingFileError) as err:  # the decoder knows no name: add it
            raise type(err)(f"{what} {_shown(ref.sent)}: {err}") from None


def parse_search(body: dict[str, Any], served: str, config: ServeConfig) -> tuple[Row, int, str | None, str]:
    check_model(body, served, required=False)
    k = _field(body, "k", (int,), 10)
    if not 1 <= k <= config.max_k:
        raise BadRequest(f"field 'k' must be in [1, {config.max_k}], got {k}", code="invalid_value")
    prefix = _field(body, "prefix", (str,))
    input_type = _choice(body, "input_type", INPUT_TYPES, "query")
    if "query" not in body:
        raise BadRequest(
            "missing required field 'query' (a text, content parts, or {'text', 'image'})",
            code="missing_field",
        )
    return parse_item(body["query"], "query", config), k, prefix, input_type


def parse_documents(body: dict[str, Any], config: ServeConfig) -> tuple[list[str], list[Row], list[Any]]:
    docs = _field(body, "documents", (list,), required=True)
    if not docs:
        raise BadRequest("field 'documents' is empty", code="empty_input")
    if len(docs) > config.max_items:
        raise BadRequest(
            f"field 'documents' has {len(docs)} items; at most {config.max_items} per request (--max-items)",
            code="too_many_items",
        )
    ids, rows, payloads = [], [], []
    for i, doc in enumerate(docs):
        where = f"documents[{i}]"
        if not isinstance(doc, dict):
            raise BadRequest(f"{where} must be an object, got {_kind(doc)}", code="invalid_type")
        item_id = doc.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise BadRequest(f"{where}.id must be a non-empty string", code="invalid_type")
        content = doc.get("content", {k: doc[k] for k in ("text", "image", "video") if k in doc})
        ids.append(item_id)
        rows.append(parse_item(content, where, config))
        payloads.append(doc.get("payload"))
    if len(set(ids)) != len(ids):
        raise BadRequest("field 'documents' repeats an id", code="duplicate_id")
    return ids, rows, payloads


def parse_ids(body: dict[str, Any], config: ServeConfig) -> list[str]:
    ids = _field(body, "ids", (list,), required=True)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise BadRequest("field 'ids' must be a non-empty array of strings", code="invalid_type")
    if len(ids) > config.max_items * 16:
        raise BadRequest(
            f"field 'ids' has {len(ids)} items; at most {config.max_items * 16}", code="too_many_items"
        )
    return [str(i) for i in ids]
