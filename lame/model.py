"""The LaME model: backbone + K reason tokens + M summary tokens + two heads, one forward pass.

How a query is embedded and trained is the method's (:mod:`lame.methods`, chosen by
``config.method``); this module holds what every method shares."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lame.backbones import build_backbone
from lame.backbones.native import append_positions, native_features, native_image_config
from lame.config import LameConfig
from lame.heads import DecoderHead, EmbeddingHead
from lame.methods import LameOutput, get_method
from lame.methods.decoding import greedy_generate
from lame_runtime.inputs.preprocess import INPUT_NAMES, Preprocessor, format_query


class LameModel(nn.Module):
    def __init__(self, config: LameConfig, preprocessor: Preprocessor, backbone: nn.Module | None = None):
        """``backbone``: reuse an already built one (benchmarks compare methods on one set of
        weights); by default it is built from ``config.backbone``."""
        super().__init__()
        self.config = config
        self.method = get_method(config.method)
        self.preprocessor = preprocessor
        special = preprocessor.text.special
        self.image_token_id = special["image"]
        self.pad_token_id = special["pad"]
        self.backbone = backbone or build_backbone(config, preprocessor.text.vocab_size, self.image_token_id)
        if config.image.native:
            # The family's grid rules (window side, position table) travel with the config and
            # the preprocessor, so export and the runtime read them from the files.
            config.image = native_image_config(config.image, self.backbone)
            preprocessor.image = config.image
        hidden = self.backbone.hidden_size
        # One parameter each; the export check looks for the safetensors key "reason_tokens".
        self.reason_tokens = nn.Parameter(torch.randn(config.appended_reason_tokens, hidden) * 0.02)
        self.summary_tokens = nn.Parameter(torch.randn(config.num_summary_tokens, hidden) * 0.02)
        self.embed_head = EmbeddingHead(hidden, config.embed_dim, config.pooling, config.embed_projection)
        self.decoder_head = None
        # A pretrained latent decoder (config.latent_decoder) is training-only: the trainer
        # attaches it (lame.decoders.lm.attach), so loading a checkpoint never needs its directory.
        if config.uses_decoder and config.latent_decoder is None:
            self.decoder_head = DecoderHead(
                hidden,
                preprocessor.text.vocab_size,
                config.decoder_dim,
                config.decoder_layers,
                config.decoder_heads,
                config.max_answer_tokens,
            )
            self.decoder_head.ignore_index = self.pad_token_id

    @property
    def num_latent(self) -> int:
        """Learned tokens appended to every input: K reason (LaME only) + M summary."""
        return self.config.appended_reason_tokens + self.config.num_summary_tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **native: torch.Tensor,
    ) -> LameOutput:
        """Fixed-size inputs (``pixel_values`` [B, P, D] + ``image_mask``), or native-resolution
        ones (``pixel_values`` [S, P, D] slices + the grid inputs of :mod:`lame.backbones.native`)."""
        return self.method.forward(self, input_ids, attention_mask, pixel_values, image_mask, **native)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **native: torch.Tensor,
    ) -> torch.Tensor:
        """Last hidden states of the whole sequence [B, L + K + M, H] (input, reason, summary)."""
        embeds, is_image, visual = self.input_embeds(
            input_ids, attention_mask, pixel_values, image_mask, **native
        )
        batch = input_ids.shape[0]  # a symbolic size under export, unlike len()
        latent = torch.cat([self.reason_tokens, self.summary_tokens]).to(embeds.dtype)
        embeds = torch.cat([embeds, latent.unsqueeze(0).expand(batch, -1, -1)], dim=1)
        ones = attention_mask.new_ones(batch, self.num_latent)
        valid = torch.cat([attention_mask, ones], dim=1)
        is_image = torch.cat([is_image, torch.zeros_like(ones, dtype=torch.bool)], dim=1)
        positions = None
        if native:
            positions = append_positions(native["position_ids"], self.num_latent)
        return self.run(embeds, valid, is_image, input_ids.shape[1], visual, positions)

    def input_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **native: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token embeddings with visual tokens merged in -> ([B, L, H], is_image [B, L],
        visual). ``visual`` is None, or with a DeepStack backbone the extra visual features
        [B, L, D, H] for the first D language layers (zero outside image positions)."""
        if native:
            tokens = self.backbone.embed_tokens(input_ids)
            return native_features(self.backbone, tokens, attention_mask, pixel_values, native)
        # (This order, mask before embeddings, keeps fixed-size graphs node for node as before.)
        is_image = (input_ids == self.image_token_id) & attention_mask.bool()
        tokens = self.backbone.embed_tokens(input_ids)
        features = self._image_features(pixel_values, image_mask, is_image)
        levels = self.backbone.deepstack_levels
        if features is None or not levels:
            return self._merge_images(tokens, is_image, features), is_image, None
        # A DeepStack tower returns [B, N, (1 + D) * H]: the merged tokens, then D levels; one
        # tensor so the row selection and the export's image_mask product treat them alike.
        batch, count, hidden = features.shape[0], features.shape[1], tokens.shape[-1]
        stacked = features.reshape(batch, count, 1 + levels, hidden)
        embeds = self._merge_images(tokens, is_image, stacked[:, :, 0])
        deep = self._merge_images(
            tokens.new_zeros(*tokens.shape[:2], levels * hidden), is_image, stacked[:, :, 1:].flatten(2)
        )
        return embeds, is_image, deep.reshape(*tokens.shape[:2], levels, hidden)

    def run(
        self,
        embeds: torch.Tensor,
        valid: torch.Tensor,
        is_image: torch.Tensor,
        input_length: int,
        visual: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The causal LM over a full sequence (positions, unless given, and the mask built from
        ``valid``); ``visual`` (DeepStack features of the first ``input_length`` positions) is
        zero-padded over the positions appended after the input."""
        if positions is None:
            positions = self.backbone.position_ids(valid, is_image)
        bias = self.attention_bias(valid, input_length, embeds.dtype)
        if visual is None:
            return self.backbone.transformer(embeds, positions, bias)
        extra = embeds.shape[1] - visual.shape[1]
        visual = torch.cat([visual, visual.new_zeros(visual.shape[0], extra, *visual.shape[2:])], dim=1)
        return self.backbone.transformer(embeds, positions, bias, visual=visual)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits through the input embedding matrix (a tied LM head; the CoT
        baseline's generator), so no extra parameters are saved or loaded."""
        weight = self.backbone.lm_head_weight()
        return torch.nn.functional.linear(hidden, weight.to(hidden.dtype))

    def _image_features(
        self, pixel_values: torch.Tensor, image_mask: torch.Tensor, is_image: torch.Tensor
    ) -> torch.Tensor | None:
        """Visual tokens [B, N, H] (zeros for text-only rows); vision runs on image rows only."""
        rows = image_mask.bool()
        counts = is_image.sum(1)
        expected = rows.long() * self.config.image.num_tokens
        if not torch.equal(counts, expected):
            raise ValueError(
                f"image placeholder tokens per row {counts.tolist()} do not match "
                f"image_mask * {self.config.image.num_tokens} = {expected.tolist()}"
            )
        if not rows.any():
            return None
        features = self.backbone.encode_images(pixel_values[rows])
        out = features.new_zeros(len(rows), *features.shape[1:])
        out[rows] = features
        return out

    @staticmethod
    def _merge_images(
        embeds: torch.Tensor, is_image: torch.Tensor, features: torch.Tensor | None
    ) -> torch.Tensor:
        # cumsum/gather/where rather than masked_scatter/nonzero: static shapes, exportable.
        if features is None:
            return embeds
        order = (is_image.long().cumsum(1) - 1).clamp(min=0)
        gathered = features.gather(1, order.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
        return torch.where(is_image.unsqueeze(-1), gathered.to(embeds.dtype), embeds)

    def attention_bias(self, valid: torch.Tensor, input_length: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive [B, 1, T, T] bias: causal + key padding (+ the bottleneck)."""
        total = valid.shape[1]
        idx = torch.arange(total, device=valid.device)
        allowed = (idx.unsqueeze(0) <= idx.unsqueeze(1)).unsqueeze(0) & valid.bool().unsqueeze(1)
        if self.config.bottleneck_mask:
            summary_query = idx >= input_length + self.config.appended_reason_tokens
            input_key = idx < input_length
            allowed = allowed & ~(summary_query.unsqueeze(1) & input_key.unsqueeze(0))
        # A padded query row would otherwise see nothing (softmax of all -inf = NaN).
        allowed = allowed | torch.eye(total, dtype=torch.bool, device=valid.device)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    # ----------------------------------------------------------------- inference API
    def feed_to_tensors(self, feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        device = self.reason_tokens.device
        names = feed if self.preprocessor.image.native else INPUT_NAMES
        return {name: torch.from_numpy(feed[name]).to(device) for name in names}

    # The encode family follows lame_runtime.encoder.Encoder, as the runtime's Embedder does.
    def encode(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
        **legacy: Any,
    ) -> np.ndarray:
        """Embed queries -> float32 [N, D], unit-norm rows. Texts and images may be given alone
        or together (equal lengths: one interleaved query per row); images are paths, PIL
        images or HxWx3 uint8 arrays. ``instruction`` is prefixed to every row as in training;
        ``dimensions``: a Matryoshka size the model was trained with (renormalised prefix).
        Candidates go through :meth:`encode_documents` (the old ``role="target"``)."""
        query = True
        if "role" in legacy:
            role = legacy.pop("role")
            if role not in ("query", "target"):
                raise ValueError(f"role must be 'query' or 'target', got {role!r}")
            new = "encode_documents(...)" if role == "target" else "encode(...)"
            warnings.warn(f"encode(role={role!r}) is deprecated; use {new}", DeprecationWarning, stacklevel=2)
            query = role == "query"
        if legacy:
            raise TypeError(f"encode() got unexpected keyword arguments {sorted(legacy)}")
        return self._encode(texts, images, [instruction], dimensions, batch_size, query, videos)

    def encode_queries(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        instruction: str | None = None,
        task: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Queries with ``instruction`` (every row), or the one ``task`` or each row's modality
        picks from :attr:`instructions` (the checkpoint's trained table; empty: none)."""
        from lame_runtime.inputs.instructions import modality, pick

        rows, pictures, clips = self.preprocessor.rows(texts, images, videos)
        if instruction is not None:
            per_row: list[str | None] = [instruction] * len(rows)
        else:
            table = self.instructions
            per_row = [
                pick(table, modality(t, i if c is None else c), task)
                for t, i, c in zip(rows, pictures, clips or [None] * len(rows))
            ]
        return self._encode(rows, pictures, per_row, dimensions, batch_size, True, clips)

    def encode_documents(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Candidates: the document instruction (``instruction``, else the trained one if
        any); only the CoT baseline embeds them differently (no rationale is generated)."""
        if instruction is None:
            instruction = (self.instructions or {}).get("document")
        return self._encode(texts, images, [instruction], dimensions, batch_size, False, videos)

    @property
    def instructions(self) -> dict[str, Any]:
        """The checkpoint's trained instructions (``instructions.json``; {} when it has none)."""
        return getattr(self, "_instructions", None) or {}

    @instructions.setter
    def instructions(self, table: dict[str, Any]) -> None:
        self._instructions = dict(table)

    @torch.no_grad()
    def _encode(
        self,
        texts: Sequence[str | None] | None,
        images: Sequence[Any] | None,
        instructions: list[str | None],
        dimensions: int | None,
        batch_size: int,
        query: bool,
        videos: Sequence[Any] | None = None,
    ) -> np.ndarray:
        from lame_runtime.embedder import unit_prefix

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        size = self._check_dimensions(dimensions)
        texts, images, clips = self.preprocessor.rows(texts, images, videos)
        if len(instructions) == 1:
            instructions = instructions * len(texts)
        for instruction in set(instructions):
            if instruction is not None and not isinstance(instruction, str):
                raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        texts = [format_query(t, i) for t, i in zip(texts, instructions)]
        count = len(texts)
        was_training = self.training
        self.eval()
        chunks = []
        try:
            for start in range(0, count, batch_size):
                part = slice(start, start + batch_size)
                feed = self.preprocessor(
                    texts[part], images[part], start, None if clips is None else clips[part]
                )
                tensors = self.feed_to_tensors(feed)
                out = self.method.encode_query(self, tensors) if query else self(**tensors)
                chunks.append(out.embedding.float().cpu().numpy())
        finally:
            self.train(was_training)
        if not chunks:
            return np.zeros((0, size), np.float32)
        vectors = np.concatenate(chunks).astype(np.float32)
        return vectors if size == self.config.embed_dim else unit_prefix(vectors, size)

    def _check_dimensions(self, dimensions: int | None) -> int:
        if dimensions is None:
            return int(self.config.embed_dim)
        served = {int(self.config.embed_dim), *(self.config.matryoshka_dims or ())}
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions not in served:
            raise ValueError(f"dimensions={dimensions!r} is not supported: choose one of {sorted(served)}")
        return dimensions

    def generate_and_embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_mask: torch.Tensor,
        max_new_tokens: int | None = None,
        stop_at_eos: bool = True,
    ) -> LameOutput:
        """CoT baseline inference: greedy rationale (KV cache), then [EMBED]."""
        return greedy_generate(
            self,
            input_ids,
            attention_mask,
            pixel_values,
            image_mask,
            max_new_tokens or self.config.max_new_tokens,
            stop_at_eos,
        ).output
