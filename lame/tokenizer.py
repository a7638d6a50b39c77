"""Train the small BPE tokenizer used by from-scratch presets (``tokenizers`` only)."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lame_runtime.inputs.text import SPECIAL_TOKENS


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    """BPE over lower-cased text; digits are split one per token so arithmetic stays legible."""
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.BPEDecoder()
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def preprocessor_for(data_dir, config):
    """The backbone's own tokenizer when its family has one (pretrained language models such as
    lame-small's SmolLM2, extended with LaME's special tokens); otherwise the dataset's
    ``tokenizer.json`` if it ships one (``lame-data`` writes it), else a BPE trained here on the
    dataset's text. Wrapped with the config's image transform."""
    from pathlib import Path

    from lame.backbones import backbone_tokenizer
    from lame.data.dataset import iter_texts
    from lame_runtime.inputs.preprocess import TOKENIZER_FILE, Preprocessor
    from lame_runtime.inputs.text import TextProcessor

    tokenizer = backbone_tokenizer(config)
    if tokenizer is None:
        path = Path(data_dir) / TOKENIZER_FILE
        tokenizer = (
            Tokenizer.from_file(str(path)) if path.is_file() else train_tokenizer(iter_texts(data_dir))
        )
    return Preprocessor(TextProcessor(tokenizer, config.max_text_tokens), config.image)
