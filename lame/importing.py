"""Pretrained VLM embedders imported as ordinary K=0 LaME checkpoints (``lame-import embedder``).

A recipe says how a published embedder turns an input into a vector: its architecture family,
its prompt template (:class:`lame_runtime.inputs.template.PromptTemplate`: chat layout, default
instruction, where the image goes), its pooling (the last token's final hidden state, no
projection) and L2 normalisation. The import writes a checkpoint whose config is
``method=discriminative, K=0, M=0, embed_projection=false`` with the backbone's own weights,
tokenizer (plus LaME's special tokens) and image statistics, and whose
``preprocessor_config.json`` carries the template; ``lame-export`` and the runtime then serve it
unchanged, and ``lame-train --init-from CKPT --method lame`` adds reason tokens on top.

Only recipes that reproduce the model card are offered (``RECIPES``). Embedders that cannot be
reproduced (GME, VLM2Vec) are listed in ``REFUSED`` with the reason, never approximated;
``lame-import embedder --help`` prints those reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lame_runtime.errors import InputError
from lame_runtime.inputs.template import PromptTemplate

CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>"]


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    model_types: tuple[str, ...]
    template: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the recipe is documented


RECIPES = {
    "qwen3-vl-embedding": Recipe(
        name="qwen3-vl-embedding",
        family="qwen3_vl",
        model_types=("qwen3_vl",),
        source="Qwen3-VL-Embedding model card / Qwen3VLEmbedder: chat template, image before "
        "text, last-token pooling of the final hidden state, L2 normalisation",
        template=dict(
            layout="<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n"
            "{image}{text}<|im_end|>\n<|im_start|>assistant\n",
            special_tokens=CHAT_SPECIALS[:4],
            image_open="<|vision_start|>",
            image_close="<|vision_end|>",
            default_instruction="Represent the user's input.",
            instruction_period=True,
            empty_text="NULL",
        ),
    ),
}

# Published embedders that cannot be reproduced here, with the reason: never offered, never
# approximated; asking for one by name gets the reason.
REFUSED = {
    "gme": "GME's reference code (gme_inference.py) runs the language model on inputs_embeds "
    "without position ids, so its images get 1-D positions instead of Qwen2-VL's M-RoPE grid; "
    "the qwen2_vl adapter always computes M-RoPE, so its vectors would differ from the model card's",
    "vlm2vec": "the released VLM2Vec checkpoints are built on Phi-3.5-V and LLaVA-NeXT (families "
    "without a LaME adapter), and the Qwen2-VL based v2 prompt format could not be verified "
    "against its reference code here",
}


def recipe(name: str) -> Recipe:
    """The recipe ``name``; a refused one is an InputError giving its reason."""
    if name in REFUSED:
        raise InputError(f"recipe {name!r} is not supported: {REFUSED[name]}")
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def import_embedder(
    directory: str | Path,
    out_dir: str | Path,
    recipe_name: str,
    image_size: Any = "448x448",
    max_text_tokens: int = 256,
    resolution: str = "fixed",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Read a local Hugging Face embedder directory, write a LaME checkpoint to ``out_dir``.

    ``resolution="native"``: images keep their aspect ratio within the directory's pixel
    budget (or ``min_pixels``/``max_pixels``), several images and videos per input, as the
    model card computes them; "fixed" resizes every image to ``image_size``."""
    from lame.backbones.directory import directory_tokenizer, read_hf_config, resolve_model_spec
    from lame.checkpoint import save_checkpoint
    from lame.config import LameConfig
    from lame.model import LameModel
    from lame_runtime.inputs.images import ImageConfig
    from lame_runtime.inputs.preprocess import Preprocessor
    from lame_runtime.inputs.text import TextProcessor
    from lame_runtime.persist import atomic_write_json, check_replaceable

    chosen = recipe(recipe_name)
    directory, out_dir = Path(directory), Path(out_dir)
    if (out_dir / "meta.json").exists():
        raise FileExistsError(f"{out_dir} already holds a checkpoint; choose another --out")
    check_replaceable(out_dir, "meta.json")
    hf_config = read_hf_config(directory, chosen.family)
    text_config = hf_config.get("text_config") or hf_config
    hidden = text_config.get("hidden_size")
    if not isinstance(hidden, int):
        raise InputError(f"{directory / 'config.json'}: no integer text hidden_size")
    spec = resolve_model_spec(
        {
            "backbone": {"family": chosen.family, "path": str(directory)},
            "max_text_tokens": max_text_tokens,
            "method": "discriminative",
            "num_reason_tokens": 0,
            "num_summary_tokens": 0,
            "bottleneck_mask": False,
            "embed_projection": False,
            "embed_dim": hidden,
        },
        image_size,
    )
    if resolution not in ("fixed", "native"):
        raise InputError(f"resolution must be 'fixed' or 'native', got {resolution!r}")
    spec["image"]["resolution"] = resolution
    for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None:
            spec["image"][key] = value
    config = LameConfig.from_dict(spec)
    template = PromptTemplate(**chosen.template, recipe=chosen.name)
    preprocessor = Preprocessor(
        TextProcessor(directory_tokenizer(directory), max_text_tokens, template),
        ImageConfig.from_dict(config.image.to_dict()),
    )  # at native resolution LameModel completes the image config from the backbone
    model = LameModel(config, preprocessor).eval()
    instruction = template.default_instruction
    meta = {
        "step": 0,
        "stage": "imported",
        "imported_from": str(directory.resolve()),
        "recipe": chosen.name,
        "recipe_source": chosen.source,
    }

    def extra(tmp: Path) -> None:
        atomic_write_json(
            tmp / "instructions.json",
            {"query": instruction, "document": instruction, "directions": {}, "tasks": {}},
        )

    save_checkpoint(out_dir, model, {}, meta, [], extra_files=extra)
    return out_dir
