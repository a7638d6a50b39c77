"""Native-resolution inputs on the PyTorch side: the visual tokens placed into the sequence and
the language model's positions extended over the appended latent tokens.

The grid-dependent inputs themselves (patch slices, positions, windows, position taps,
``visual_index``, ``position_ids``) are computed once, in NumPy, by
:mod:`lame_runtime.inputs.grid`; training, the exported graph and the runtime all read them."""

from __future__ import annotations

import torch

# Inputs of a native-resolution feed besides input_ids / attention_mask / pixel_values; a family
# adds its own grid inputs (``Backbone.native_inputs``).
NATIVE_SEQUENCE_INPUTS = ("visual_index", "position_ids")
# Inputs with one entry per patch slice (dim 0), not per row.
SLICE_INPUTS = (
    "pixel_values",
    "patch_mask",
    "vision_positions",
    "window_ids",
    "position_taps",
    "position_weights",
)


def native_features(
    backbone, tokens: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, native: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> (embeddings [B, L, H] with the visual tokens in place, is_image [B, L], DeepStack
    features [B, L, D, H] or None). ``visual_index`` [B, L] names, for each visual placeholder,
    its token in the flat output of the vision tower (-1 elsewhere): a gather, no data-dependent
    shape, so it exports as is."""
    missing = [name for name in (*NATIVE_SEQUENCE_INPUTS, *backbone.native_inputs) if name not in native]
    if missing or pixel_values is None:
        raise ValueError(
            f"{type(backbone).__name__} at native resolution needs pixel_values and {', '.join(missing)}"
        )
    index = native["visual_index"]
    is_image = (index >= 0) & attention_mask.bool()
    grid = {
        name: native[name]
        for name in backbone.native_inputs
        if name not in ("patch_mask", "vision_positions")
    }
    features = backbone.encode_slices(pixel_values, native["patch_mask"], native["vision_positions"], **grid)
    flat = features.reshape(-1, features.shape[-1])
    placed = flat[index.clamp(min=0)].to(tokens.dtype)  # [B, L, C]
    batch, length, hidden = tokens.shape
    levels = backbone.deepstack_levels
    stacked = placed.reshape(batch, length, 1 + levels, hidden)
    embeds = torch.where(is_image.unsqueeze(-1), stacked[:, :, 0], tokens)
    if not levels:
        return embeds, is_image, None
    deep = stacked[:, :, 1:] * is_image[:, :, None, None].to(tokens.dtype)
    return embeds, is_image, deep


def append_positions(position_ids: torch.Tensor, count: int) -> torch.Tensor:
    """[3, B, L] input positions -> [3, B, L + count]: the appended tokens continue as text
    after the row's last token (rows are left-padded, so that is the last column)."""
    last = position_ids[:, :, -1].max(dim=0).values  # [B]
    steps = torch.arange(1, count + 1, device=position_ids.device, dtype=position_ids.dtype)
    extra = (last[:, None] + steps).unsqueeze(0).expand(3, -1, -1)
    return torch.cat([position_ids, extra], dim=2)


def native_image_config(image, backbone):
    """``image`` (an ImageConfig at native resolution) completed with what the family's grid
    rules need from its vision config: Qwen2.5-VL's window side and temporal position rate,
    Qwen3-VL's position-table side and per-step time grids. Families without native support
    (Idefics3, SmolLM2 + EfficientNet) are refused here, by name."""
    from dataclasses import replace

    if not hasattr(backbone, "encode_slices"):
        raise ValueError(
            f"{type(backbone).__name__} reads fixed-size images only (resolution 'fixed'); native "
            "resolution is for the Qwen-VL families (qwen2_vl, qwen2_5_vl, qwen3_vl)"
        )
    vision = backbone.model.config.vision_config
    extra: dict = {"resolution": "native"}
    if hasattr(backbone, "window_side"):
        extra["window"] = backbone.window_side
        extra["tokens_per_second"] = float(getattr(vision, "tokens_per_second", 2))
    if hasattr(backbone, "position_side"):
        extra["position_side"] = backbone.position_side
        extra["split_time"] = True
    return replace(image, **extra)


def select_rows(feed: dict[str, torch.Tensor], part: slice, merge_unit: int) -> dict[str, torch.Tensor]:
    """``part`` of a feed's rows (GradCache chunks). A native feed keeps the patch slices of
    those rows only, with ``visual_index`` renumbered into them, so a chunk runs the vision
    tower on its own images; a fixed-size feed is sliced row-wise."""
    if "visual_index" not in feed:
        return {name: value[part] for name, value in feed.items()}
    index = feed["visual_index"][part]
    per_slice = feed["pixel_values"].shape[1] // merge_unit
    used = torch.unique(index[index >= 0] // per_slice)
    if used.numel() == 0:  # a chunk of text rows: one all-padding slice keeps the shapes valid
        used = torch.zeros(1, dtype=index.dtype, device=index.device)
    renumbered = torch.searchsorted(used, (index // per_slice).clamp(min=0)) * per_slice + index % per_slice
    out = {name: feed[name][used] for name in SLICE_INPUTS if name in feed}
    out["input_ids"], out["attention_mask"] = feed["input_ids"][part], feed["attention_mask"][part]
    out["visual_index"] = torch.where(index >= 0, renumbered, index)
    out["position_ids"] = feed["position_ids"][:, part]
    return out
