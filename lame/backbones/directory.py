"""A local pretrained backbone directory (``--backbone-path DIR``) and the image resolution.

From DIR (a Hugging Face model folder; nothing is downloaded):

* ``config.json``: the architecture, copied into the LaME config (``backbone.hf_config``), so a
  LaME checkpoint rebuilds the backbone without DIR (``lame.load`` never needs it again);
* ``tokenizer.json``: the backbone's own tokenizer, extended with LaME's special tokens as added
  special tokens (as lame-small does with SmolLM2's): no silent vocabulary mismatch;
* ``preprocessor_config.json`` and the vision config: patch, merge and temporal patch sizes and
  the normalisation statistics the vision tower was trained with.

The resolution is fixed per model (static visual-token count in the exported graph); it comes
from ``--image-size HxW`` or the preset's ``image_size`` key, else the preset's image section,
and is checked against what the family can take (:func:`check_image_for_family`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lame_runtime.errors import InputError, MissingFileError
from lame_runtime.inputs.preprocess import TOKENIZER_FILE
from lame_runtime.persist import read_json

# Transformers' image-processor settings in a backbone directory. Not LaME's own preprocessor
# file (lame_runtime.inputs.preprocess.PREPROCESSOR_FILE), whose name happens to be the same.
HF_PROCESSOR_FILE = "preprocessor_config.json"
HF_VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"

# family -> the Transformers model_type its config.json must declare
MODEL_TYPES = {
    "qwen2_vl": ("qwen2_vl",),
    "qwen2_5_vl": ("qwen2_5_vl",),
    "qwen3_vl": ("qwen3_vl",),
    "idefics3": ("idefics3",),
}


def parse_image_size(value: Any) -> tuple[int, int]:
    """``"448x448"``, ``"448"``, ``[448, 448]`` -> (height, width)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        height, width = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX\u00d7]\s*(\d+))?\s*", str(value))
        if not match:
            raise InputError(f"image size {value!r}: expected HxW, e.g. 448x448")
        height, width = int(match[1]), int(match[2] or match[1])
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise InputError(f"image size {value!r}: height and width must be positive")
    return height, width


def check_image_for_family(family: str, image: dict[str, Any]) -> None:
    """Refuse a resolution the family cannot take, naming the constraint."""
    h, w = int(image["height"]), int(image["width"])
    patch, merge = int(image["patch_size"]), int(image["merge_size"])
    block = patch * merge
    if family == "idefics3" and h != w:
        raise InputError(
            f"image size {h}x{w}: the idefics3 family needs square images (its "
            "vision tower and pixel-shuffle connector use a square grid)"
        )
    if h % block or w % block:
        raise InputError(
            f"image size {h}x{w} is not divisible by patch_size x merge_size = "
            f"{patch} x {merge} = {block} (family {family}); pick sides that are "
            f"multiples of {block}, e.g. --image-size {_round(h, block)}x"
            f"{_round(w, block)}"
        )


def _round(value: int, block: int) -> int:
    return max(block, round(value / block) * block)


def resolve_model_spec(model: dict[str, Any], image_size: Any = None) -> dict[str, Any]:
    """A preset's ``model`` section (a dict) with the backbone directory's architecture and
    image processor and the requested resolution applied; checked, not yet a LameConfig."""
    model = json.loads(json.dumps(model))  # a deep copy
    image_size = image_size if image_size is not None else model.pop("image_size", None)
    model.pop("image_size", None)
    backbone = model.setdefault("backbone", {})
    image = model.setdefault("image", {})
    _fill_image_defaults(image)
    family = backbone.get("family", "qwen2_vl")
    if backbone.get("path") and not backbone.get("hf_config"):
        directory = Path(backbone["path"])
        backbone["hf_config"] = read_hf_config(directory, family)
        image.update(image_settings(directory, backbone["hf_config"], family))
    if image_size is not None:
        image["height"], image["width"] = parse_image_size(image_size)
    check_image_for_family(family, image)
    return model


def _fill_image_defaults(image: dict[str, Any]) -> None:
    from dataclasses import fields

    from lame_runtime.inputs.images import ImageConfig

    defaults = ImageConfig()
    for field in fields(ImageConfig):
        image.setdefault(field.name, getattr(defaults, field.name))


def with_backbone_dir(config):
    """``LameConfig`` -> the same with ``backbone.hf_config`` and the image settings read from
    ``backbone.path`` (unchanged when there is no path or it was read already)."""
    if not config.backbone.path or config.backbone.hf_config:
        return config
    # type(config), not an import of lame.config: that module imports this one (no cycle).
    return type(config).from_dict(resolve_model_spec(config.to_dict()))


def _require_dir(directory: Path) -> Path:
    if not directory.is_dir():
        raise MissingFileError(
            f"backbone path {directory} is not a directory (a local Hugging "
            "Face model directory is expected; nothing is downloaded)"
        )
    return directory


def read_hf_config(directory: Path, family: str) -> dict[str, Any]:
    path = _require_dir(directory) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"backbone directory {directory} lacks config.json")
    config = read_json(path, InputError, dict)
    allowed = MODEL_TYPES.get(family)
    if allowed is None:
        raise InputError(
            f"backbone family {family!r} does not load from a directory "
            f"(--backbone-path); families that do: {', '.join(MODEL_TYPES)}"
        )
    if config.get("model_type") not in allowed:
        raise InputError(
            f"{path} declares model_type {config.get('model_type')!r}, but the "
            f"preset's backbone family is {family!r} (expects {allowed[0]!r}); "
            "choose a preset of that family"
        )
    return config


def image_settings(directory: Path, hf_config: dict[str, Any], family: str) -> dict[str, Any]:
    """Patch / merge / temporal sizes and mean / std for the image config."""
    vision = hf_config.get("vision_config") or {}
    processor_path = directory / HF_PROCESSOR_FILE
    processor = read_json(processor_path, InputError, dict) if processor_path.is_file() else {}
    if family == "idefics3":
        patch, merge = vision.get("patch_size"), hf_config.get("scale_factor")
        temporal = None
    else:
        patch = vision.get("patch_size", vision.get("spatial_patch_size"))
        merge, temporal = vision.get("spatial_merge_size"), vision.get("temporal_patch_size")
    for key, from_model in (("patch_size", patch), ("merge_size", merge), ("temporal_patch_size", temporal)):
        declared = processor.get(key)
        if declared is not None and from_model is not None and int(declared) != int(from_model):
            raise InputError(
                f"{processor_path}: {key}={declared} but the model's config.json has {from_model}"
            )
    settings: dict[str, Any] = {}
    for key, value in (
        ("patch_size", patch if patch is not None else processor.get("patch_size")),
        ("merge_size", merge if merge is not None else processor.get("merge_size")),
        ("temporal_patch_size", temporal if temporal is not None else processor.get("temporal_patch_size")),
    ):
        if value is not None:
            settings[key] = int(value)
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
        if processor.get(theirs) is not None:
            settings[ours] = [float(v) for v in processor[theirs]]
    # Native resolution's pixel budgets (used only when resolution is "native").
    settings.update(_budget(processor, processor_path, "min_pixels", "max_pixels"))
    video_path = directory / HF_VIDEO_PROCESSOR_FILE
    if video_path.is_file():
        video = read_json(video_path, InputError, dict)
        settings.update(_budget(video, video_path, "video_min_pixels", "video_max_pixels"))
        for ours, theirs, kind in (
            ("video_fps", "fps", float),
            ("video_min_frames", "min_frames", int),
            ("video_max_frames", "max_frames", int),
        ):
            if isinstance(video.get(theirs), (int, float)) and not isinstance(video.get(theirs), bool):
                settings[ours] = kind(video[theirs])
    return settings


def _budget(processor: dict[str, Any], path: Path, low: str, high: str) -> dict[str, int]:
    """A Qwen-VL processor's pixel budget: ``size`` {shortest_edge, longest_edge} (current
    Transformers) or top-level min_pixels / max_pixels (older files)."""
    size = processor.get("size") if isinstance(processor.get("size"), dict) else {}
    out = {}
    for ours, keys in ((low, ("shortest_edge", "min_pixels")), (high, ("longest_edge", "max_pixels"))):
        value = size.get(keys[0], processor.get(keys[1]))
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{path}: {keys[0]}/{keys[1]} must be a positive integer, got {value!r}")
        out[ours] = value
    return out


def directory_tokenizer(directory: str | Path):
    """DIR/tokenizer.json plus LaME's special tokens (added special tokens, new ids at the end)."""
    from tokenizers import AddedToken, Tokenizer

    from lame_runtime.inputs.text import SPECIAL_TOKENS

    path = _require_dir(Path(directory)) / TOKENIZER_FILE
    if not path.is_file():
        raise MissingFileError(
            f"backbone directory {directory} lacks {TOKENIZER_FILE} (the "
            "backbone's own tokenizer is used with --backbone-path)"
        )
    tokenizer = Tokenizer.from_file(str(path))
    missing = [tok for tok in SPECIAL_TOKENS.values() if tokenizer.token_to_id(tok) is None]
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in missing])
    return tokenizer
