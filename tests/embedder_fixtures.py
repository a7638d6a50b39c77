"""A tiny random Qwen3-VL embedder directory laid out as Qwen3-VL-Embedding's (config.json,
model.safetensors with the model card's ``model.`` prefix, tokenizer.json +
tokenizer_config.json + chat_template.json, preprocessor_config.json), and the model card's
way of computing embeddings with Transformers, as the reference."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3-VL's chat template, condensed to what embedding uses (system + user turns with image
# and text parts, the generation prompt); it renders those turns as the full template does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for item in message.content %}"
    "{%- if item.type == 'image' or 'image' in item %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
DEFAULT_INSTRUCTION = "Represent the user's input."
PATCH, MERGE, TEMPORAL = 8, 2, 2
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
WORDS = (
    "find the image whose digits add up to seven two three four five sum count "
    "represent user input retrieve a an of is there how many NULL query document"
)


def _card_model_class():
    from transformers import Qwen3VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLPreTrainedModel

    class Qwen3VLForEmbedding(Qwen3VLPreTrainedModel):
        """The model card's wrapper: ``self.model`` is a Qwen3VLModel (keys ``model.*``)."""

        def __init__(self, config):
            super().__init__(config)
            self.model = Qwen3VLModel(config)
            self.post_init()

        def forward(self, **inputs):
            return self.model(**inputs)

    return Qwen3VLForEmbedding


# The video processor's settings written beside the image processor's (a budget per clip).
VIDEO = {"size": {"shortest_edge": 256, "longest_edge": 16384}, "fps": 2, "min_frames": 4, "max_frames": 16}


def build_qwen3_embedder_dir(directory: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen3VLConfig

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([WORDS, WORDS.upper(), "Represent the user's input.\n"] * 4, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2TokenizerFast",
                "model_max_length": 8192,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "padding_side": "right",
                "split_special_tokens": False,
            }
        )
    )
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "patch_size": PATCH,
                "merge_size": MERGE,
                "temporal_patch_size": TEMPORAL,
                "image_mean": MEAN,
                "image_std": STD,
                "size": {"shortest_edge": 256, "longest_edge": 65536},
            }
        )
    )
    (directory / "video_preprocessor_config.json").write_text(
        json.dumps(
            {
                "video_processor_type": "Qwen3VLVideoProcessor",
                "patch_size": PATCH,
                "merge_size": MERGE,
                "temporal_patch_size": TEMPORAL,
                "image_mean": MEAN,
                "image_std": STD,
                **VIDEO,
            }
        )
    )
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIALS}
    head_dim = 16
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=tokenizer.get_vocab_size() + 64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=head_dim,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=3,
            hidden_size=32,
            out_hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=TEMPORAL,
            num_position_embeddings=36,
            deepstack_visual_indexes=[0, 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen3VLForEmbedding"]
    torch.manual_seed(seed)
    model = _card_model_class()(config)
    with torch.no_grad():  # random init keeps some tensors tiny: make every weight matter
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def reference_embeddings(directory: Path, rows: list[dict], max_pixels: int = 65536) -> torch.Tensor:
    """The model card's computation: chat template, Qwen3VLProcessor, Qwen3VLModel, the last
    non-padding token's final hidden state, L2-normalised. ``rows``: dicts with optional
    ``text``, ``image`` (HxWx3 uint8) or ``images`` (a list), ``video`` ([T, H, W, 3] uint8
    frames at ``fps``) and ``instruction``; visuals come before the text, images first."""
    from PIL import Image
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(str(directory), padding_side="right")
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
        image_mean=MEAN,
        image_std=STD,
        size={"shortest_edge": 256, "longest_edge": max_pixels},
    )
    model = _card_model_class().from_pretrained(str(directory)).eval()
    conversations, images, videos = [], [], []
    for row in rows:
        instruction = row.get("instruction", DEFAULT_INSTRUCTION).strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
        content = []
        pictures = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
        for picture in pictures:
            content.append({"type": "image", "image": "given"})
            images.append(Image.fromarray(picture))
        if row.get("video") is not None:
            content.append({"type": "video", "video": "given"})
            videos.append(_reference_video(row["video"], row["fps"]))
        if row.get("text"):
            content.append({"type": "text", "text": row["text"]})
        if not content:
            content.append({"type": "text", "text": "NULL"})
        conversations.append(
            [
                {"role": "system", "content": [{"type": "text", "text": instruction}]},
                {"role": "user", "content": content},
            ]
        )
    # Qwen3VLProcessor's steps (it cannot be built here: its video processor needs
    # torchvision): render the chat template, expand each <|image_pad|> to the image's merged
    # patch count and each video to its frames' "<t seconds>" + pads, tokenise with padding,
    # mark image (1) and video (2) tokens in mm_token_type_ids.
    texts = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
    ]
    vision = dict(image_processor(images=images, return_tensors="pt")) if images else {}
    counts = iter((vision["image_grid_thw"].prod(-1) // MERGE**2).tolist() if images else [])
    pad = "<|image_pad|>"
    texts = [_expand(text, pad, lambda: "<|placeholder|>" * next(counts)) for text in texts]
    texts = [text.replace("<|placeholder|>", pad) for text in texts]
    spans = iter(v["prompt"] for v in videos)
    wrapper = "<|vision_start|><|video_pad|><|vision_end|>"
    texts = [_expand(text, wrapper, lambda: next(spans)) for text in texts]
    if videos:
        vision["pixel_values_videos"] = torch.cat([v["patches"] for v in videos])
        vision["video_grid_thw"] = torch.tensor([v["grid"] for v in videos])
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"), **vision)
    ids = inputs["input_ids"]
    inputs["mm_token_type_ids"] = (ids == model.config.image_token_id).int() + 2 * (
        ids == model.config.video_token_id
    ).int()
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"]
    last = mask.shape[1] - mask.flip(1).argmax(1) - 1
    return F.normalize(hidden[torch.arange(len(rows)), last], dim=-1)


def _expand(text: str, marker: str, replacement) -> str:
    while marker in text:
        text = text.replace(marker, replacement(), 1)
    return text


def _reference_video(frames, fps: float) -> dict:
    """Qwen3VLVideoProcessor's steps with its own functions where they run without
    torchvision: frame sampling, the clip's smart_resize (the test's frames are already at the
    size it picks, since the resize itself needs torchvision), normalisation, patchify, and
    the processor's timestamps for the prompt."""
    import numpy as np
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize
    from transformers.video_utils import VideoMetadata

    processor = Qwen3VLVideoProcessor(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
        image_mean=MEAN,
        image_std=STD,
        **VIDEO,
    )
    indices = processor.sample_frames(VideoMetadata(total_num_frames=len(frames), fps=fps))
    picked = np.asarray(frames)[indices]
    height, width = smart_resize(
        num_frames=len(picked),
        height=picked.shape[1],
        width=picked.shape[2],
        temporal_factor=TEMPORAL,
        factor=PATCH * MERGE,
        min_pixels=VIDEO["size"]["shortest_edge"],
        max_pixels=VIDEO["size"]["longest_edge"],
    )
    assert (height, width) == picked.shape[1:3], "test frames must be at the size the processor picks"
    x = (torch.from_numpy(picked).float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    patches, grid_t, grid_h, grid_w = processor.patchify(x.permute(0, 3, 1, 2)[None], PATCH, MERGE, TEMPORAL)
    stamps = Qwen3VLProcessor._calculate_timestamps(None, indices, fps, TEMPORAL)
    per_frame = grid_h * grid_w // MERGE**2
    prompt = "".join(
        f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_frame + "<|vision_end|>" for t in stamps
    )
    return {"patches": patches[0], "grid": [grid_t, grid_h, grid_w], "prompt": prompt}
