"""Datasets as users have them, trained at native resolution: images of varying sizes, rows with
two images and video rows (folders of PNG frames), batches bounded by a visual-token budget, and
the fixed-size path refusing such rows by name before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lame.data.batching import BatchPlan, batch_indices, row_costs
from lame.data.dataset import DatasetError, load_train
from lame_runtime.inputs.images import ImageConfig
from lame_runtime.inputs.native import row_visuals, visual_tokens

SIZES = [(32, 48), (48, 32), (64, 32), (40, 40), (24, 72)]  # (height, width)
COLOURS = ["red", "green", "blue", "yellow"]


def _png(path: Path, height: int, width: int, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def _clip(root: Path, name: str, frames: int, seed: int) -> str:
    for index in range(frames):
        _png(root / "clips" / name / f"{index:03d}.png", 32, 40, seed * 10 + index)
    return f"clips/{name}"


def build_mixed_dataset(root: Path) -> Path:
    """8 training rows: one image (five sizes), two images, a video query or target."""
    for index, (height, width) in enumerate(SIZES):
        _png(root / "images" / f"{index}.png", height, width, index)
    clips = [_clip(root, f"clip{index}", 4 + index % 2, index) for index in range(3)]
    train = [
        {"query": {"image": "images/0.png"}, "target": {"text": "a red shape"}},
        {"query": {"text": "a green shape"}, "target": {"image": "images/1.png"}},
        {
            "query": {"text": "which is larger?", "image": ["images/2.png", "images/3.png"]},
            "target": {"text": "the blue one"},
            "negatives": [{"text": "the red one"}],
        },
        {"query": {"video": clips[0]}, "target": {"text": "a yellow clip"}},
        {"query": {"text": "a slow clip"}, "target": {"video": clips[1]}},
        {"query": {"text": "what moves?", "video": clips[2]}, "target": {"text": "a square"}},
        {"query": {"image": ["images/4.png", "images/0.png"]}, "target": {"text": "two shapes"}},
        {"query": {"image": "images/3.png"}, "target": {"text": "a wide shape"}},
    ]
    evals = [
        {
            "query": {"text": "a yellow clip"},
            "candidates": [{"video": clips[0]}, {"video": clips[1]}, {"image": "images/0.png"}],
        },
        {
            "query": {"image": ["images/2.png", "images/3.png"]},
            "candidates": [{"text": "the blue one"}, {"text": "a red shape"}],
        },
    ]
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> Path:
    return build_mixed_dataset(tmp_path_factory.mktemp("mixed"))


def _preset(tmp_path: Path, name: str) -> str:
    """The packaged preset with small video frames (the pixel flags cover images only)."""
    from lame.config import load_preset

    spec = load_preset(name)
    spec["model"]["image"].update(video_min_pixels=256, video_max_pixels=512, video_min_frames=2)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


NATIVE_CONFIG = ImageConfig(
    resolution="native", min_pixels=256, max_pixels=1024, video_min_pixels=256, video_max_pixels=512
)


def test_visual_tokens_are_counted_from_headers_as_the_preprocessor_makes_them(mixed_dir):
    rows = load_train(mixed_dir)
    cfg = NATIVE_CONFIG
    for row in rows:
        for item in row.items():
            made = row_visuals(list(item.images) or None, item.video, cfg, 0)
            assert visual_tokens(list(item.images), item.video, cfg) == sum(
                v.tokens(cfg.merge_size) for v in made
            )
    two = rows[2].query
    assert visual_tokens(list(two.images), None, cfg) > visual_tokens(two.images[0], None, cfg)


def test_budget_cuts_batches_whole_rows_and_resumes_identically():
    costs = np.random.default_rng(0).integers(1, 40, 50).tolist()
    plan = BatchPlan(50, 8, seed=3, costs=costs, budget=100)
    batches = [plan(step) for step in range(40)]
    assert all(sum(costs[i] for i in batch) <= 100 for batch in batches)
    assert all(1 <= len(batch) <= 8 for batch in batches)
    assert any(len(batch) < 8 for batch in batches)  # the budget did cut
    # A fresh plan (a restart) asked for step 37 first gives the same rows.
    assert np.array_equal(BatchPlan(50, 8, seed=3, costs=costs, budget=100)(37), batches[37])
    # Within an epoch every row appears at most once; the epoch covers all but a short tail.
    per_epoch = plan._counts[0]
    epoch = np.concatenate([plan(step) for step in range(per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch) > 50 - 8
    order = np.random.default_rng([3, 0]).permutation(50)
    assert epoch.tolist() == order[: len(epoch)].tolist()  # cut in order: no row skipped
    # Without a budget: the unbounded order, unchanged.
    assert np.array_equal(BatchPlan(50, 8, 3)(11), batch_indices(50, 8, 3, 11))


def test_a_row_over_the_budget_alone_is_named(mixed_dir):
    rows = load_train(mixed_dir)
    costs = row_costs(rows, NATIVE_CONFIG, hard_negatives=1, budget=10_000)
    worst = int(np.argmax(costs))
    with pytest.raises(DatasetError, match=rf"^train\.jsonl:{worst + 1}: needs {costs[worst]} visual tokens"):
        row_costs(rows, NATIVE_CONFIG, hard_negatives=1, budget=costs[worst] - 1)


def test_fixed_size_training_refuses_several_images_by_row(mixed_dir, tmp_path):
    from lame.cli.train import build_configs
    from lame.training.train import train

    model, config = build_configs("tiny-qwen2.5-vl", {"max_steps": 2, "batch_size": 4})
    with pytest.raises(DatasetError, match=r"^train\.jsonl:3: query has 2 images; .*--resolution native"):
        train(mixed_dir, tmp_path / "ck", model, config, show_progress=False)
    assert not (tmp_path / "ck" / "meta.json").exists()


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_native_training_on_images_of_all_sizes_and_videos(preset, mixed_dir, tmp_path):
    import lame
    from lame.checkpoint import read_metrics
    from lame.cli.train import main

    out = tmp_path / "ck"
    args = ["--data", str(mixed_dir), "--out", str(out), "--preset", _preset(tmp_path, preset)]
    args += ["--resolution", "native", "--min-pixels", "256", "--max-pixels", "1024"]
    args += ["--max-steps", "4", "--batch-size", "4", "--max-batch-visual-tokens", "10"]
    assert main([*args, "--save-every", "100", "--threads", "1", "--no-progress"]) == 0
    metrics = read_metrics(out)
    stages = [m["stage"] for m in metrics if "total" in m]
    assert {"warmup", "joint"} <= set(stages)
    assert all(math.isfinite(m["total"]) for m in metrics if "total" in m)
    assert metrics[-1]["stage"] == "final" and metrics[-1]["eval"]["n"] == 2

    model = lame.load(out)
    assert model.preprocessor.image.native
    clip = str(mixed_dir / "clips" / "clip0")
    vectors = model.encode(texts=["a yellow clip", None], videos=[clip, clip])
    assert vectors.shape == (2, model.config.embed_dim) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])  # the text changes the row


def test_an_unreadable_image_is_named_by_row_when_counting(tmp_path):
    root = build_mixed_dataset(tmp_path / "data")
    (root / "images" / "1.png").write_bytes(b"not an image")
    rows = load_train(root)  # existence is what loading checks
    with pytest.raises(DatasetError, match=r"^train\.jsonl:2: cannot read image .*1\.png"):
        row_costs(rows, NATIVE_CONFIG, hard_negatives=1, budget=1000)


def test_budgeted_native_run_resumed_after_a_kill_equals_the_uninterrupted_run(
    mixed_dir, tmp_path, monkeypatch
):
    import torch
    from train_helpers import train_killed_at, weights

    from lame.cli.train import build_configs
    from lame.training.train import Trainer, train

    native = {"resolution": "native", "min_pixels": 256, "max_pixels": 1024}
    model, config = build_configs(
        _preset(tmp_path, "tiny-qwen2.5-vl"),
        {**native, "max_steps": 6, "batch_size": 4, "save_every": 2, "max_batch_visual_tokens": 10},
    )
    config.final_eval = False
    seen: list[list[int]] = []
    real_step = Trainer._step

    def recording(self, step, params, optimizer):
        seen.append(self.plan_batches(step).tolist())
        return real_step(self, step, params, optimizer)

    monkeypatch.setattr(Trainer, "_step", recording)
    train(mixed_dir, tmp_path / "straight", model, config, show_progress=False)
    straight_batches = list(seen)
    assert any(len(batch) < 4 for batch in straight_batches)  # the budget cut some batches
    train_killed_at(3, mixed_dir, tmp_path / "killed", model, config, monkeypatch)
    train(mixed_dir, tmp_path / "killed", model, config, resume=True, show_progress=False)
    # Killed when step 3 began (steps 0-2 ran), resumed from the step-2 checkpoint: same rows.
    assert seen[6:] == straight_batches[:3] + straight_batches[2:]
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_gradcache_at_native_resolution_gives_the_unchunked_gradients(preset, mixed_dir, make_model):
    """GradCache chunks a native batch by rows; each chunk keeps the patch slices of its own
    rows (visual_index renumbered), so loss and gradients equal the unchunked step's."""
    from dataclasses import replace

    import torch

    from lame.config import LameConfig, load_preset
    from lame.data.batching import Collator
    from lame.training.gradcache import chunked_backward
    from lame.training.objective import compute_losses

    config = LameConfig.from_dict(load_preset(preset)["model"])
    image = replace(
        config.image, **{k: getattr(NATIVE_CONFIG, k) for k in ("resolution", "min_pixels", "max_pixels")}
    )
    image = replace(image, video_min_pixels=256, video_max_pixels=512, video_min_frames=2)
    model = make_model(backbone=config.backbone, image=image).train()
    batch = Collator(model.preprocessor, model.config.max_answer_tokens, 0)(load_train(mixed_dir))
    assert batch["query"]["pixel_values"].shape[0] > 1  # several slices: chunks take their own

    def run(step):
        model.zero_grad()
        losses = step()
        return float(losses["total"].detach()), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    def whole():
        losses = compute_losses(model, batch)
        losses["total"].backward()
        return losses

    loss, grads = run(whole)
    chunked_loss, chunked = run(lambda: chunked_backward(model, batch, 3))
    assert chunked_loss == pytest.approx(loss, rel=1e-5)
    assert any("visual" in n and g.abs().sum() > 0 for n, g in grads.items())  # the tower trains
    for name, grad in grads.items():
        assert torch.allclose(chunked[name], grad, atol=2e-6, rtol=1e-4), name
