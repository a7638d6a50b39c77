"""LoRA on the backbone's language model, through ``peft``.

* :func:`apply_lora` injects rank-``r`` adapters into the language model's ``targets`` (default
  ``q_proj``/``v_proj``, peft's own default for Qwen2 and Llama); the vision tower and the
  language model's own weights are frozen in every stage, while the latent tokens, both heads
  and the backbone's connector stay fully trained (see :func:`lame.training.train.set_trainable`).
* Checkpoints hold **merged** weights (W + B A * scale) under the plain parameter names, so
  ``lame.load``, ``lame-export`` and the runtime never see an adapter.
* For an exact ``--resume`` the trainer state also keeps the unmerged adapted weights and the
  adapter matrices (:func:`resume_tensors`): re-merging and un-merging in float would not give
  the same bits back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lame_runtime.errors import InputError

if TYPE_CHECKING:  # torch loads where adapters are used, not where TrainConfig names the targets
    import torch
    from torch import nn

DEFAULT_TARGETS = ("q_proj", "v_proj")
RESUME_PREFIX = "lora."
_ADAPTER = "default"


def apply_lora(
    model, rank: int, targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS, alpha: float | None = None
) -> list[str]:
    """Add adapters to ``model.backbone.text_model`` in place -> the adapted module names."""
    from torch import nn

    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise InputError(
            f"--lora-rank needs the 'peft' package (>= 0.18 with transformers 5): "
            f"pip install 'lame-embed[train]' ({err})"
        ) from None
    if rank < 1:
        raise InputError(f"lora rank must be >= 1, got {rank}")
    targets = list(targets)
    text_model = model.backbone.text_model
    present = {
        name.rsplit(".", 1)[-1]
        for name, module in text_model.named_modules()
        if isinstance(module, nn.Linear)
    }
    unknown = sorted(set(targets) - present)
    if unknown:
        raise InputError(
            f"lora targets {unknown} are not linear layers of the language model; "
            f"available: {sorted(present)}"
        )
    config = LoraConfig(
        r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=targets, bias="none"
    )
    inject_adapter_in_model(config, text_model, adapter_name=_ADAPTER)
    return [name for name, _ in lora_layers(model)]


def lora_layers(model) -> list[tuple[str, nn.Module]]:
    """(state-dict prefix, peft LoRA layer) pairs of ``model``."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def has_lora(model) -> bool:
    try:
        return bool(lora_layers(model))
    except ImportError:
        return False


def is_adapter_parameter(name: str) -> bool:
    return ".lora_" in name


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every adapter folded into its base weight, under the names
    the model has without LoRA; the live model is not modified."""
    import torch

    state = model.state_dict()
    layers = lora_layers(model)
    if not layers:
        return state
    merged: dict[str, torch.Tensor] = {}
    prefixes = {name for name, _ in layers}
    for key, value in state.items():
        prefix = _owning_layer(key, prefixes)
        if prefix is None:
            merged[key] = value
        elif key.startswith(f"{prefix}.base_layer."):
            merged[prefix + "." + key[len(prefix) + len(".base_layer.") :]] = value
    with torch.no_grad():
        for prefix, layer in layers:
            key = f"{prefix}.weight"
            delta = layer.get_delta_weight(_ADAPTER)
            merged[key] = (merged[key].float() + delta.float()).to(merged[key].dtype)
    return merged


def _owning_layer(key: str, prefixes: set[str]) -> str | None:
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in prefixes:
            return candidate
    return None


def resume_tensors(model) -> dict[str, torch.Tensor]:
    """What a merged checkpoint cannot give back exactly: the unmerged adapted weights and
    the adapter matrices, keyed ``lora.<state-dict name>``."""
    prefixes = {name for name, _ in lora_layers(model)}
    return {
        RESUME_PREFIX + key: value.detach().cpu().contiguous()
        for key, value in model.state_dict().items()
        if _owning_layer(key, prefixes) is not None
    }


def restore_resume_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
    state = {
        key[len(RESUME_PREFIX) :]: value for key, value in tensors.items() if key.startswith(RESUME_PREFIX)
    }
    expected = set(resume_tensors(model))
    if {RESUME_PREFIX + k for k in state} != expected:
        from lame_runtime.errors import CheckpointError

        raise CheckpointError(
            "the checkpoint's LoRA resume state does not match the adapters "
            "of this run (different --lora-rank or --lora-targets?)"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
