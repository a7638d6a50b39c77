"""Typed configuration. Saved as JSON beside every checkpoint (``config.json``).

The paper does not publish its exact split of latent tokens; the defaults here are ours:
K=8 reason tokens feed the decoder head, M=1 summary token ([EMBED]) feeds the embedding head,
and with ``bottleneck_mask`` the summary token sees the query only through the reason tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from lame.methods import METHODS, get_method  # noqa: F401  (METHODS: re-exported)
from lame_runtime.errors import InputError
from lame_runtime.inputs.images import ImageConfig
from lame_runtime.persist import read_json

POOLINGS = ("embed", "attention")
DECODER_MODES = ("frozen", "lora", "full")  # how a pretrained latent decoder LM trains
# METHODS (lame.methods, one module each): lame: the method. discriminative: K=0, [EMBED] only
# (VLM2Vec). cot: generate a rationale, then embed (UME-R1). latent: K sequential latent steps,
# each fed the last hidden state (Coconut). lm: generative pre-training (next-token loss only).


@dataclass
class BackboneConfig:
    """Either a tiny random-init Qwen2-VL built from these sizes, or ``path`` to a local HF model."""

    family: str = "qwen2_vl"
    path: str | None = None
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_heads: int = 4
    rope_theta: float = 10000.0
    attn_implementation: str = "sdpa"
    vision_mlp_ratio: int = 2
    vocab_size: int | None = None  # None: the tokenizer's; larger pads the embeddings (speed
    # benchmarks of real-size models with a small tokenizer)
    deepstack_layers: list[int] | None = None  # qwen3_vl: vision blocks feeding DeepStack
    # (None: every block but the last, at most 3)
    vision_position_grid: int | None = None  # qwen3_vl: side of the learned position table
    # (None: the image's patch grid)
    hf_config: dict[str, Any] | None = None  # with ``path``: that directory's config.json,
    # so a checkpoint rebuilds the backbone without it


@dataclass
class LatentDecoderConfig:
    """A pretrained causal LM (local Hugging Face directory) as the latent decoder: the K reason
    states, projected to its embedding width, are its prefix and it is teacher-forced on the
    answer in its own tokenizer. Training only: the weights stay in ``path`` (never in
    model.safetensors), so a checkpoint loads, evaluates and exports without the directory."""

    path: str
    sha256: str | None = None  # of the directory's *.safetensors, recorded when training starts
    mode: str = "frozen"  # frozen | lora (rank ``lora_rank`` on q/v) | full
    lora_rank: int = 8
    model_type: str | None = None  # from its config.json, for the record

    def validate(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("latent_decoder.path must be a directory path")
        if self.mode not in DECODER_MODES:
            raise ValueError(f"latent_decoder.mode must be one of {DECODER_MODES}, got {self.mode!r}")
        if self.lora_rank < 1:
            raise ValueError(f"latent_decoder.lora_rank must be >= 1, got {self.lora_rank}")


@dataclass
class LameConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    max_text_tokens: int = 48
    num_reason_tokens: int = 8  # K; 0 gives the discriminative (VLM2Vec-style) baseline
    num_summary_tokens: int = 1  # M >= 1; the last one is [EMBED]. 0: the last *input*
    # token is pooled (imported last-token embedders, K=0)
    embed_dim: int = 128
    embed_projection: bool = True  # false: the pooled state itself (embed_dim = hidden)
    pooling: str = "embed"  # "embed": [EMBED] state; "attention": learned pool over M
    bottleneck_mask: bool = True  # summary tokens see the input only via the reason tokens
    decoder_dim: int = 128
    decoder_layers: int = 1
    decoder_heads: int = 4
    max_answer_tokens: int = 24
    w_contrastive: float = 1.0
    w_reconstruction: float = 0.5
    w_diversity: float = 0.05
    temperature: float = 0.05
    matryoshka_dims: list[int] | None = None  # e.g. [32, 64, 128]: InfoNCE also on each prefix
    # (renormalised); must increase and end at embed_dim
    method: str = "lame"  # see METHODS
    max_rationale_tokens: int = 64  # cot, lm: training rationales are cut to this many tokens
    max_new_tokens: int = 128  # cot: generation budget per query at inference
    w_lm: float = 1.0  # cot, lm: weight of the next-token loss on the rationale
    latent_decoder: LatentDecoderConfig | None = None  # None: the small DecoderHead

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        if isinstance(self.image, dict):
            self.image = ImageConfig.from_dict(self.image)
        if isinstance(self.latent_decoder, dict):
            self.latent_decoder = LatentDecoderConfig(**self.latent_decoder)
        self.validate()

    def validate(self) -> None:
        if self.num_reason_tokens < 0:
            raise ValueError("num_reason_tokens must be >= 0")
        if self.num_summary_tokens < 0:
            raise ValueError("num_summary_tokens must be >= 0")
        if self.num_summary_tokens == 0 and (
            self.method != "discriminative" or self.num_reason_tokens or self.pooling != "embed"
        ):
            raise ValueError(
                "num_summary_tokens=0 (pool the last input token, as imported "
                "embedders do) needs method 'discriminative', num_reason_tokens=0 "
                "and pooling 'embed'"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.bottleneck_mask and self.num_reason_tokens == 0:
            raise ValueError(
                "bottleneck_mask needs reason tokens: with num_reason_tokens=0 the "
                "summary tokens would see nothing; set bottleneck_mask=false"
            )
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        self._validate_matryoshka()
        from lame.backbones.directory import check_image_for_family

        check_image_for_family(self.backbone.family, self.image.to_dict())
        self._validate_method()
        if self.image.native:
            if self.backbone.family not in NATIVE_FAMILIES:
                raise ValueError(
                    f"resolution 'native' is for the Qwen-VL families {NATIVE_FAMILIES}; "
                    f"{self.backbone.family} reads fixed-size images (resolution 'fixed')"
                )
            if self.method not in ("lame", "discriminative"):
                raise ValueError(
                    f"resolution 'native' serves the one-pass methods (lame, discriminative); "
                    f"method {self.method!r} decodes step by step with fixed-size images"
                )
        if self.latent_decoder is not None:
            self.latent_decoder.validate()
            if not self.uses_decoder:
                raise ValueError(
                    "latent_decoder needs a decoder to replace: method 'lame' with "
                    "num_reason_tokens > 0 and w_reconstruction > 0"
                )

    def _validate_matryoshka(self) -> None:
        dims = self.matryoshka_dims
        if dims is None:
            return
        if (
            not isinstance(dims, (list, tuple))
            or len(dims) < 2
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        ):
            raise ValueError(f"matryoshka_dims must be a list of at least 2 integers, got {dims!r}")
        if list(dims) != sorted(set(dims)) or dims[0] < 1 or dims[-1] != self.embed_dim:
            raise ValueError(
                f"matryoshka_dims must increase from >= 1 and end at embed_dim="
                f"{self.embed_dim} (nested prefixes of the embedding), got "
                f"{list(dims)}"
            )
        self.matryoshka_dims = list(dims)

    def _validate_method(self) -> None:
        get_method(self.method).validate(self)  # ValueError naming the methods if unknown
        if self.max_new_tokens < 1 or self.max_rationale_tokens < 1:
            raise ValueError("max_new_tokens and max_rationale_tokens must be >= 1")

    @property
    def uses_decoder(self) -> bool:
        return get_method(self.method).uses_decoder(self)

    @property
    def appended_reason_tokens(self) -> int:
        """Learned reason tokens appended to every input (the latent method feeds states)."""
        return get_method(self.method).appended_reason_tokens(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image"] = self.image.to_dict()  # a fixed-size model's config.json stays as it was
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LameConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown LameConfig keys: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> LameConfig:
        return cls.from_dict(read_json(path, InputError, dict))


NATIVE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def preset_names() -> list[str]:
    files = resources.files("lame.configs").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset is JSON with a ``model`` section (LameConfig) and a ``train`` section (defaults)."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return read_json(path, InputError, dict, "preset")
    resource = resources.files("lame.configs") / f"{name}.json"
    if not resource.is_file():
        raise ValueError(
            f"unknown preset {name!r}; available: {', '.join(preset_names())} (or a path to a preset .json)"
        )
    return json.loads(resource.read_text())
