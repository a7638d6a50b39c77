"""A pretrained causal language model as LaME's latent decoder (the released LaME's recipe).

The K reason states, projected into the LM's input-embedding width, are a prefix; the answer,
tokenised with the LM's own tokenizer, follows teacher-forced, and the loss is on the answer
tokens only: the last prefix position predicts the first answer token, each answer token the
next, the last one EOS. To lower that loss the K states must carry the answer in a form a real
language model reads, a different bottleneck from the one-layer :class:`lame.heads.DecoderHead`
trained from scratch.

Training only. The LM stays in its directory: a checkpoint's ``model.safetensors`` never holds
it (:func:`split_state`), ``config.json`` records the directory and a hash of its weights, and
``latent_decoder.safetensors`` holds what training changed (the projection; LoRA adapters or,
with mode ``full``, the LM's weights) so that a resumed or continued run picks it up. Loading,
evaluating and exporting a checkpoint never need the directory.

Supported: Qwen3, Qwen2 and Llama-family ``*ForCausalLM`` directories with ``config.json``,
safetensors weights and ``tokenizer.json``; loaded with ``local_files_only`` and without
remote code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lame.heads import token_loss
from lame_runtime.errors import InputError

MODEL_TYPES = ("qwen3", "qwen2", "llama")
STATE_FILE = "latent_decoder.safetensors"
PREFIX = "decoder_head."  # the head's keys in LameModel.state_dict()
IGNORE = -100
LORA_TARGETS = ("q_proj", "v_proj")


def check_decoder_dir(path: str | Path) -> dict:
    """Validate a latent-decoder directory without loading weights -> its config.json.

    Raises InputError naming what is missing or unsupported."""
    directory = Path(path)
    if not directory.is_dir():
        raise InputError(f"latent decoder directory not found: {directory}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"latent decoder {directory} has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"latent decoder {config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise InputError(f"latent decoder {config_path} is not a JSON object")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type not in MODEL_TYPES or not any(str(a).endswith("ForCausalLM") for a in architectures):
        raise InputError(
            f"latent decoder {directory} must be a causal language model of type "
            f"{'/'.join(MODEL_TYPES)} (config.json: model_type={model_type!r}, "
            f"architectures={architectures!r})"
        )
    if not weight_files(directory):
        raise InputError(f"latent decoder {directory} has no .safetensors weights")
    if not (directory / "tokenizer.json").is_file():
        raise InputError(f"latent decoder {directory} has no tokenizer.json (its own tokenizer)")
    if eos_id(config) is None:
        raise InputError(f"latent decoder {config_path} declares no eos_token_id")
    return config


def weight_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("*.safetensors"))


def weights_hash(directory: str | Path) -> str:
    """sha256 over the directory's safetensors files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for path in weight_files(Path(directory)):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def eos_id(config: dict) -> int | None:
    value = config.get("eos_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class LoraLinear(nn.Module):
    """``base(x) + scale * B A x`` with B zero-initialised (starts as the pretrained layer)."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / rank)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = 2.0  # alpha = 2 * rank, as the backbone's LoRA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.base(x)
            + F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype)) * self.scale
        )


class LmDecoderHead(nn.Module):
    """Reason states [B, K, H] -> the LM's answer logits; same interface as DecoderHead."""

    def __init__(self, lm: nn.Module, tokenizer, eos: int, hidden: int, mode: str, lora_rank: int):
        super().__init__()
        width = lm.get_input_embeddings().embedding_dim
        self.proj = nn.Linear(hidden, width)
        self.lm = lm
        self.tokenizer = tokenizer
        self.eos = eos
        self.mode = mode
        self.ignore_index = IGNORE
        if mode == "lora":
            for module in list(lm.modules()):
                for name, child in list(module.named_children()):
                    if name in LORA_TARGETS and isinstance(child, nn.Linear):
                        setattr(module, name, LoraLinear(child, lora_rank))
        self.apply_mode()

    def apply_mode(self) -> None:
        """requires_grad by mode: the projection always trains; the LM's own weights only with
        ``full``; with ``lora`` its adapters."""
        for name, param in self.lm.named_parameters():
            param.requires_grad_(self.mode == "full" or (self.mode == "lora" and ".lora_" in name))

    def pretrained_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.lm.named_parameters() if ".lora_" not in name]

    def enable_gradient_checkpointing(self) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes (the rest is the directory's weights); a tied tensor once."""
        return {
            k: v.detach()
            for k, v in self.named_parameters()
            if k.startswith("proj.") or ".lora_" in k or (self.mode == "full" and k.startswith("lm."))
        }

    def encode_answers(self, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forcing ids and targets [B, T] (T = longest answer + 1): targets are the
        answer then EOS, ``IGNORE`` after; inputs the answer (its last column is never read)."""
        encoded = [self.tokenizer.encode(t, add_special_tokens=False).ids[:max_tokens] for t in texts]
        length = max(len(e) for e in encoded) + 1
        inputs = torch.full((len(texts), length), self.eos, dtype=torch.long)
        targets = torch.full((len(texts), length), IGNORE, dtype=torch.long)
        for i, ids in enumerate(encoded):
            inputs[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            targets[i, : len(ids) + 1] = torch.tensor([*ids, self.eos], dtype=torch.long)
        return inputs, targets

    def forward(self, reason_states: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """-> logits [B, T, vocab]: position j predicts target j (prefix last state -> a1)."""
        k, length = reason_states.shape[1], inputs.shape[1]
        tokens = self.lm.get_input_embeddings()(inputs)
        prefix = self.proj(reason_states).to(tokens.dtype)
        # Right padding under a causal mask: no real token attends to a later pad.
        hidden = self.lm.base_model(inputs_embeds=torch.cat([prefix, tokens], dim=1)).last_hidden_state
        return self.lm.get_output_embeddings()(hidden[:, k - 1 : k - 1 + length])

    def loss(self, reason_states, inputs, targets, ignore_index: int, tokens=None) -> torch.Tensor:
        return token_loss(self(reason_states, inputs), targets, ignore_index, tokens)


def load_lm_decoder(config, hidden: int) -> LmDecoderHead:
    """The head for ``config.latent_decoder`` (a LatentDecoderConfig); records the weights'
    hash and model type in it, or refuses a directory whose weights changed since."""
    spec = config.latent_decoder
    lm_config = check_decoder_dir(spec.path)
    digest = weights_hash(spec.path)
    if spec.sha256 is not None and spec.sha256 != digest:
        raise InputError(
            f"latent decoder {spec.path}: its weights changed since this run started "
            f"(sha256 {digest[:12]}..., recorded {spec.sha256[:12]}...)"
        )
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a library call prints nothing
    lm = AutoModelForCausalLM.from_pretrained(
        spec.path,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=torch.float32,
    )
    tokenizer = Tokenizer.from_file(str(Path(spec.path) / "tokenizer.json"))
    spec.sha256, spec.model_type = digest, lm_config["model_type"]
    return LmDecoderHead(lm, tokenizer, eos_id(lm_config), hidden, spec.mode, spec.lora_rank)


def attach(model, state_dir: str | Path | None = None) -> LmDecoderHead:
    """Give ``model`` (a LameModel whose config names a latent decoder) its LM head; with
    ``state_dir``, restore the trained part from that checkpoint's STATE_FILE if it has one."""
    head = load_lm_decoder(model.config, model.backbone.hidden_size)
    if state_dir is not None and (Path(state_dir) / STATE_FILE).is_file():
        from safetensors.torch import load_file

        from lame_runtime.errors import CheckpointError

        state = load_file(str(Path(state_dir) / STATE_FILE))
        expected = set(head.trained_state())
        if set(state) != expected:
            raise CheckpointError(
                f"{Path(state_dir) / STATE_FILE} does not match the latent decoder's trained "
                f"tensors (mode {head.mode!r}): {sorted(set(state) ^ expected)[:4]}"
            )
        head.load_state_dict(state, strict=False)
    model.decoder_head = head
    return head


def split_state(model, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(model.safetensors' tensors, STATE_FILE's tensors): a latent decoder's weights never go
    into the model file, and only its trained part into its own."""
    head = model.decoder_head
    if not isinstance(head, LmDecoderHead):
        return state, {}
    kept = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    return kept, head.trained_state()
