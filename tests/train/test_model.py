"""The LaME model: M-RoPE positions, equality with Qwen2-VL's own forward, masks, padding."""

import numpy as np
import pytest
import torch

IMAGE = np.random.default_rng(0).integers(0, 256, (16, 64, 3), dtype=np.uint8)


def _feed(model, texts, images):
    return model.feed_to_tensors(model.preprocessor(texts, images))


def _mixed_feed(model):
    texts = ["the digits add up to 9", "find the image that matches", None, "the largest is 7"]
    images = [None, IMAGE, IMAGE[:, ::-1].copy(), IMAGE[::-1].copy()]
    return _feed(model, texts, images)


def test_mrope_positions_equal_get_rope_index(make_model):
    model = make_model()
    feed = _mixed_feed(model)
    is_image = feed["input_ids"] == model.image_token_id
    ours = model.backbone.position_ids(feed["attention_mask"], is_image)
    gh, gw = model.config.image.grid
    grids = torch.tensor([[1, gh, gw]] * int(feed["image_mask"].sum()))
    reference, _ = model.backbone.model.get_rope_index(
        feed["input_ids"],
        mm_token_type_ids=is_image.int(),
        image_grid_thw=grids,
        attention_mask=feed["attention_mask"],
    )
    assert torch.equal(ours, reference)
    # Not a vacuous check: image rows really get 3-D positions that differ from 1-D ones.
    one_d = (feed["attention_mask"].cumsum(-1) - 1).clamp(min=0) * feed["attention_mask"]
    assert not torch.equal(ours[1], one_d)


def test_input_hidden_states_equal_qwen2_vl_forward(make_model):
    """Our embeds+positions+mask path reproduces Qwen2VLModel(input_ids, pixel_values, ...):
    this is what catches the silent 1-D position fallback with inputs_embeds."""
    model = make_model(bottleneck_mask=False)
    feed = _mixed_feed(model)
    rows = feed["image_mask"].bool()
    gh, gw = model.config.image.grid
    qwen = model.backbone.model
    with torch.no_grad():
        ours = model.hidden_states(**feed)[:, : feed["input_ids"].shape[1]]
        reference = qwen(
            input_ids=feed["input_ids"],
            attention_mask=feed["attention_mask"],
            pixel_values=feed["pixel_values"][rows].flatten(0, 1),
            image_grid_thw=torch.tensor([[1, gh, gw]] * int(rows.sum())),
            mm_token_type_ids=(feed["input_ids"] == model.image_token_id).int(),
        ).last_hidden_state
        embeds = qwen.get_input_embeddings()(feed["input_ids"])
        fallback = qwen.language_model(
            inputs_embeds=embeds, attention_mask=feed["attention_mask"]
        ).last_hidden_state
    valid = feed["attention_mask"].bool()
    assert torch.allclose(ours[valid], reference[valid], atol=1e-5)
    # The trap exists: with 1-D positions the image rows come out different.
    assert not torch.allclose(fallback[valid], reference[valid], atol=1e-3)


def test_reason_tokens_parameter_and_embedding_shape(make_model):
    model = make_model()
    k, hidden = model.config.num_reason_tokens, model.backbone.hidden_size
    assert model.state_dict()["reason_tokens"].shape == (k, hidden)
    out = model(**_mixed_feed(model))
    assert out.embedding.shape == (4, model.config.embed_dim)
    assert out.reason_states.shape == (4, k, hidden)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_left_padding_invariance(make_model):
    model = make_model()
    alone = model.encode(texts=["the digits add up to 9"])
    batched = model.encode(
        texts=["the digits add up to 9", "the odd digits add up to 13 and the largest digit is 7"]
    )
    assert np.abs(alone[0] - batched[0]).max() < 1e-5
    with_image = model.encode(texts=["sum"], images=[IMAGE])
    batched = model.encode(
        texts=["sum", "a much longer text to force padding on row 0"], images=[IMAGE, None]
    )
    assert np.abs(with_image[0] - batched[0]).max() < 1e-5


def test_bottleneck_mask_blocks_summary_from_input(make_model):
    model = make_model(bottleneck_mask=True)
    k, m = model.config.num_reason_tokens, model.config.num_summary_tokens
    valid = torch.ones(1, 5 + k + m, dtype=torch.long)
    valid[0, 0] = 0  # one padded slot
    allowed = model.attention_bias(valid, 5, torch.float32)[0, 0] == 0
    summary_rows = allowed[5 + k :]
    assert not summary_rows[:, :5].any(), "summary tokens must not see input tokens"
    assert summary_rows[:, 5 : 5 + k].all(), "summary tokens see every reason token"
    assert allowed[5 : 5 + k, 1:5].all() and not allowed[5 : 5 + k, 0].any()
    assert not allowed.triu(1).any(), "causal"
    # And it matters: changing the input changes the summary only through the reason tokens,
    # so the model's output differs from the unmasked one.
    feed = _mixed_feed(model)
    unmasked = make_model(bottleneck_mask=False)
    unmasked.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(model(**feed).embedding, unmasked(**feed).embedding)


def test_discriminative_baseline_has_no_reason_tokens(make_model):
    model = make_model(num_reason_tokens=0, bottleneck_mask=False)
    assert model.state_dict()["reason_tokens"].shape[0] == 0
    assert model.decoder_head is None
    vectors = model.encode(texts=["the digits add up to 9"], images=[IMAGE])
    assert vectors.shape == (1, model.config.embed_dim)


def test_encode_modalities(make_model):
    model = make_model()
    for kwargs in (
        {"texts": ["a", "b"]},
        {"images": [IMAGE, IMAGE]},
        {"texts": ["a", None], "images": [IMAGE, IMAGE]},
    ):
        vectors = model.encode(**kwargs)
        assert vectors.dtype == np.float32 and vectors.shape == (2, model.config.embed_dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_image_placeholder_mismatch_is_a_clear_error(make_model):
    model = make_model()
    feed = _feed(model, ["x"], [IMAGE])
    feed["image_mask"] = torch.zeros_like(feed["image_mask"])
    with pytest.raises(ValueError, match="placeholder"):
        model(**feed)


def test_batched_vision_equals_qwen2_vl_visual(make_model):
    model = make_model()
    pixels = model.feed_to_tensors(
        model.preprocessor(images=[IMAGE, IMAGE[::-1].copy(), IMAGE[:, ::-1].copy()])
    )["pixel_values"]
    gh, gw = model.config.image.grid
    with torch.no_grad():
        ours = model.backbone.encode_images(pixels)
        reference = model.backbone.model.visual(
            pixels.flatten(0, 1), grid_thw=torch.tensor([[1, gh, gw]] * 3)
        ).pooler_output
    assert torch.allclose(ours.flatten(0, 1), reference, atol=1e-5)


def test_backbone_from_local_pretrained_directory(make_model, tmp_path, tiny_config, digits_dir):
    """--backbone-path loads a local Hugging Face directory (safetensors, no hub access) and
    its own tokenizer.json."""
    import shutil
    from dataclasses import replace

    source = make_model()
    source.backbone.model.save_pretrained(tmp_path / "qwen", safe_serialization=True)
    shutil.copy(digits_dir / "tokenizer.json", tmp_path / "qwen" / "tokenizer.json")
    backbone = replace(tiny_config.backbone, path=str(tmp_path / "qwen"))
    loaded = make_model(seed=1, backbone=backbone)
    for name, value in source.backbone.state_dict().items():
        assert torch.equal(value, loaded.backbone.state_dict()[name]), name
    with pytest.raises(FileNotFoundError, match="lacks"):
        (tmp_path / "empty").mkdir()
        make_model(backbone=replace(tiny_config.backbone, path=str(tmp_path / "empty")))
