"""Checkpoint directories: written atomically (temp dir + rename), loaded with safetensors only.

Layout::

    config.json              LameConfig
    train_config.json        TrainConfig of the run that wrote it
    model.safetensors        weights (``reason_tokens`` is [K, hidden])
    tokenizer.json           tokenizers' own format
    preprocessor_config.json image transform + text length
    trainer_state.json       step, stage, optimizer param groups (no pickle anywhere)
    trainer_state.safetensors optimizer moments + torch CPU/CUDA RNG states (+ LoRA's
                             unmerged weights), for exact resume
    meta.json                stage, step, latest metrics
    metrics.jsonl            the whole training log up to this step
    latent_decoder.safetensors  only with a pretrained latent decoder: what training changed
                             in it (projection, adapters); its own weights stay in its
                             directory and are never needed to load, evaluate or export
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lame.config import LameConfig
from lame_runtime.errors import CheckpointError
from lame_runtime.inputs.preprocess import PREPROCESSOR_FILE, TOKENIZER_FILE, Preprocessor
from lame_runtime.persist import atomic_write_dir, check_replaceable, parse_json, recover_dir  # noqa: F401
from lame_runtime.persist import read_json as _read_json_file


def _read_json(path: Path) -> Any:
    return _read_json_file(path, CheckpointError)


MODEL_FILE = "model.safetensors"
REQUIRED_FILES = ("config.json", MODEL_FILE, TOKENIZER_FILE, PREPROCESSOR_FILE)


def resolve(path: str | Path) -> Path:
    """The checkpoint directory, recovering the previous one if a swap was interrupted."""
    found = recover_dir(path)
    if found is None:
        raise CheckpointError(f"checkpoint directory not found: {path}")
    return found


def save_checkpoint(
    directory: Path,
    model,
    train_config: dict[str, Any],
    meta: dict[str, Any],
    metrics: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer | None = None,
    extra_files: Callable[[Path], None] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    resume_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """``weights``: what goes into model.safetensors (default ``model.state_dict()``; LoRA
    runs pass merged weights); ``resume_tensors``: more trainer state for an exact resume."""

    def write(tmp: Path) -> None:
        model.config.save(tmp / "config.json")
        (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2))
        from lame.decoders.lm import STATE_FILE, split_state

        source, decoder = split_state(model, model.state_dict() if weights is None else weights)
        save_file(_cpu(source), str(tmp / MODEL_FILE), metadata={"format": "pt", "lame": "1"})
        if decoder:
            save_file(_cpu(decoder), str(tmp / STATE_FILE))
        model.preprocessor.save(tmp)
        _save_trainer_state(tmp, meta, optimizer, resume_tensors or {})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        if extra_files is not None:
            extra_files(tmp)

    atomic_write_dir(directory, write, marker="meta.json")


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
        for k, v in tensors.items()
    }


def _save_trainer_state(
    directory: Path, meta: dict[str, Any], optimizer, extra: dict[str, torch.Tensor]
) -> None:
    tensors = {"rng.torch": torch.get_rng_state(), **extra}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()  # this process's current GPU
    groups = []
    if optimizer is not None:
        state = optimizer.state_dict()
        groups = state["param_groups"]
        for index, values in state["state"].items():
            for name, value in values.items():
                tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).contiguous().cpu()
    save_file(tensors, str(directory / "trainer_state.safetensors"))
    info = {"step": meta["step"], "stage": meta["stage"], "param_groups": groups}
    (directory / "trainer_state.json").write_text(json.dumps(info, indent=2))


def load_trainer_state(directory: Path, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore optimizer moments and the torch RNG; returns trainer_state.json's content."""
    directory = resolve(directory)
    info = _read_json(_require(directory, "trainer_state.json"))
    tensors = read_trainer_tensors(directory)
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda_state = tensors.pop("rng.cuda", None)
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)
    if optimizer is not None and info["param_groups"]:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if not key.startswith("optim."):
                continue
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info


def read_trainer_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of trainer_state.safetensors (RNG states, optimizer moments, LoRA state)."""
    return _load_tensors(_require(resolve(directory), "trainer_state.safetensors"))


def read_json(directory: str | Path, name: str) -> Any:
    return _read_json(_require(resolve(directory), name))


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
    path = resolve(directory) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [
        parse_json(line, f"{path}:{number}", CheckpointError)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip()
    ]


def load_model(directory: str | Path, device: str | torch.device = "cpu"):
    """The checkpoint's model on ``device`` (``auto``/``cpu``/``cuda``/``cuda:N``), eval mode."""
    from lame.device import resolve_device
    from lame.model import LameModel

    target = resolve_device(device)  # a missing GPU fails before minutes of loading
    directory = resolve(directory)
    for name in REQUIRED_FILES:
        _require(directory, name)
    try:
        config = LameConfig.load(directory / "config.json")
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{directory / 'config.json'} is not a valid LaME config: {err}") from err
    from lame.backbones import architecture_only

    with architecture_only():  # the checkpoint's weights replace any packaged pretrained ones
        model = LameModel(config, Preprocessor.from_dir(directory))
    load_weights(model, directory / MODEL_FILE)
    if (directory / "instructions.json").is_file():  # encode_queries picks from them, as the runtime does
        from lame_runtime.inputs.instructions import check
        from lame_runtime.persist import read_json

        path = directory / "instructions.json"
        model.instructions = check(read_json(path, CheckpointError), str(path))
    return model.to(target).eval()


def load_weights(model, path: Path) -> None:
    state = _load_tensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if names
        )
        raise CheckpointError(f"{path} does not match its config.json ({detail})")
    model.load_state_dict(state)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {err}") from err


def _require(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a complete LaME checkpoint: missing {name}")
    return path
