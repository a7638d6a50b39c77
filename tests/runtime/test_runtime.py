"""lame_runtime.Embedder on a real export: torch-free, parity with PyTorch, threads, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import lame_runtime
from lame_runtime import ArtifactError, Embedder, RuntimeOptions
from lame_runtime.inputs.preprocess import format_query

REPO = Path(__file__).resolve().parents[2]

TORCH_FREE = r"""
import sys
for name in ("torch", "transformers", "lame"):
    sys.modules[name] = None  # any import of these now raises ImportError
import json
import numpy as np
from lame_runtime import Embedder, RuntimeOptions

artifact, image = sys.argv[1], sys.argv[2]
embedder = Embedder(artifact)
out = {
    "text": embedder.encode(texts=["the digits are 1 and 2", "the largest digit is 8"]),
    "image": embedder.encode(images=[image]),
    "both": embedder.encode(texts=["the digits are 1 and 2"], images=[image]),
    "query": embedder.encode_queries(images=[image]),
}
print(json.dumps({name: {"dtype": str(v.dtype), "shape": list(v.shape),
                         "norms": np.linalg.norm(v, axis=1).tolist()}
                  for name, v in out.items()}
                 | {"dim": embedder.dim,
                    "text_vs_both": float(out["text"][0] @ out["both"][0])}))
"""


@pytest.fixture(scope="module")
def eval_rows(digits_dir):
    from lame.data.dataset import load_eval

    return load_eval(digits_dir)


@pytest.fixture(scope="module")
def eval_queries(eval_rows):
    """The eval queries as the evaluator embeds them: instruction prefixed, image if any."""
    return (
        [format_query(r.query.text, r.instruction) for r in eval_rows],
        [r.query.image for r in eval_rows],
    )


@pytest.fixture(scope="module")
def torch_model(trained_ckpt):
    import lame

    return lame.load(trained_ckpt)


@pytest.fixture
def artifact_copy(artifact_dir, tmp_path):
    """A private copy of the artifact that a test may corrupt."""

    def make(edit_manifest=None) -> Path:
        copy = tmp_path / "artifact"
        shutil.copytree(artifact_dir, copy, ignore=shutil.ignore_patterns("calib.npz"))
        if edit_manifest:
            path = copy / "lame_artifact.json"
            manifest = json.loads(path.read_text())
            edit_manifest(manifest)
            path.write_text(json.dumps(manifest))
        return copy

    return make


def test_embeds_without_torch_transformers_or_lame(artifact_dir, digits_dir):
    image = sorted((digits_dir / "images").glob("*.png"))[0]
    out = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(artifact_dir), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for name, rows in (("text", 2), ("image", 1), ("both", 1), ("query", 1)):
        assert report[name]["dtype"] == "float32"
        assert report[name]["shape"] == [rows, report["dim"]]
        np.testing.assert_allclose(report[name]["norms"], 1.0, atol=1e-5)
    assert report["text_vs_both"] < 0.99999  # the image really changed the text+image row


@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.99)])
def test_parity_with_pytorch(artifact_dir, torch_model, eval_queries, precision, min_cos):
    texts, images = eval_queries
    reference = torch_model.encode(texts=texts, images=images)
    got = Embedder(artifact_dir, precision=precision).encode(texts=texts, images=images, batch_size=16)
    assert got.dtype == np.float32 and got.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= min_cos, f"{precision}: min cosine {cosines.min():.6f}"


def test_eval_hit_at_1_matches_pytorch(artifact_dir, torch_model, eval_rows):
    from lame.evaluation.evaluate import evaluate

    runtime = evaluate(Embedder(artifact_dir).encode, eval_rows)
    reference = evaluate(torch_model.encode, eval_rows)
    assert runtime["n"] == reference["n"] == len(eval_rows)
    assert abs(runtime["hit@1"] - reference["hit@1"]) <= 0.5, (runtime, reference)


def test_encode_queries_uses_artifact_instruction_or_override(artifact_dir, digits_dir):
    """One instruction per query direction: text queries get the text->image one, image
    queries the image->text one; no majority vote."""
    from lame.data.digits import INSTRUCTIONS
    from lame_runtime.errors import InputError

    embedder = Embedder(artifact_dir)
    directions = embedder.artifact.instructions["directions"]
    assert directions == {"text->image": INSTRUCTIONS["t2i"], "image->text": INSTRUCTIONS["i2t"]}
    assert embedder.artifact.instruction("query") is None  # two were trained: none is "the" one
    instruction = INSTRUCTIONS["t2i"]
    image = str(sorted((digits_dir / "images").glob("*.png"))[0])
    assert embedder.query_instructions(["a", None], [None, image]) == [
        INSTRUCTIONS["t2i"],
        INSTRUCTIONS["i2t"],
    ]
    np.testing.assert_allclose(
        embedder.encode_queries(images=[image]),
        embedder.encode(texts=[INSTRUCTIONS["i2t"]], images=[image]),
        atol=1e-6,
    )
    with pytest.raises(InputError, match="pass instruction="):  # no text+image direction
        embedder.encode_queries(texts=["the digits are 1 and 2"], images=[image])
    task = next(t for t in embedder.artifact.instructions["tasks"] if t.endswith(".i2t"))
    assert embedder.query_instructions(["a"], [None], task=task) == [INSTRUCTIONS["i2t"]]
    with pytest.raises(InputError, match="unknown task 'nope'"):
        embedder.encode_queries(texts=["a"], task="nope")
    text = "the digits are 3 and 4"
    default = embedder.encode_queries(texts=[text])
    explicit = embedder.encode(texts=[format_query(text, instruction)])
    np.testing.assert_allclose(default, explicit, atol=1e-6)
    bare = embedder.encode_queries(texts=[text], instruction="")
    np.testing.assert_allclose(bare, embedder.encode(texts=[text]), atol=1e-6)
    other = embedder.encode_queries(texts=[text], instruction="Find the image that matches.")
    assert float(other[0] @ default[0]) < 0.99999


def test_concurrent_encode_matches_sequential(artifact_dir, digits_dir, monkeypatch):
    images = [str(p) for p in sorted((digits_dir / "images").glob("*.png"))[:24]]
    texts = [f"the digits are {i % 10} and {i % 7}" for i in range(24)]
    jobs = [dict(texts=texts[i::4]) if i % 2 else dict(images=images[i::4]) for i in range(4)]
    jobs += [dict(texts=texts[i::3], images=images[i::3]) for i in range(3)]

    created = []

    class CountingBackend(lame_runtime.engines.backends.OnnxRuntimeBackend):
        def __init__(self, *args, **kwargs):
            created.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("lame_runtime.embedder.OnnxRuntimeBackend", CountingBackend)
    shared = Embedder(
        artifact_dir, options=RuntimeOptions(lazy=True)
    )  # the first calls race to create the session
    expected = [Embedder(artifact_dir).encode(**job, batch_size=4) for job in jobs]
    created.clear()
    start = threading.Barrier(4)
    results, errors = {}, []

    def worker(worker_id: int) -> None:
        try:
            start.wait()
            for round_ in range(3):
                for j, job in enumerate(jobs):
                    results[(worker_id, round_, j)] = shared.encode(**job, batch_size=4)
        except Exception as err:  # surfaced below; a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 4 * 3 * len(jobs)
    # One session per graph: the full graph, and the text-only graph text rows are routed to.
    assert len(created) == 1 + shared.routes_text, (
        "lazy loading created more than one ONNX Runtime session per graph"
    )
    for (_, _, j), vectors in results.items():
        np.testing.assert_allclose(vectors, expected[j], atol=1e-6, rtol=0)


def test_missing_artifact_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        Embedder(tmp_path / "nope")


def test_missing_manifest(artifact_dir, tmp_path):
    shutil.copy(artifact_dir / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(ArtifactError, match="missing lame_artifact.json"):
        Embedder(tmp_path)


def test_corrupt_model_fails_sha256(artifact_copy):
    copy = artifact_copy()
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        Embedder(copy)
    lazy = Embedder(
        copy, options=RuntimeOptions(lazy=True)
    )  # a lazy embedder reports it on first use of that graph
    with pytest.raises(ArtifactError, match="sha256"):
        lazy.encode(texts=["x"], images=[np.zeros((16, 64, 3), dtype=np.uint8)])
    Embedder(copy, precision="fp16")  # the other files are still fine


def test_precision_not_in_artifact(artifact_copy):
    copy = artifact_copy(lambda m: m["models"].pop("int8"))
    with pytest.raises(ArtifactError, match="no int8 model.*fp32, fp16"):
        Embedder(copy, precision="int8")
    with pytest.raises(ValueError, match="precision must be"):
        Embedder(copy, precision="bf16")


def test_infer_rejects_bad_feeds(artifact_dir):
    embedder = Embedder(artifact_dir)
    good = embedder.preprocessor(["the digits are 1 and 2"], [None])
    assert embedder.infer(good).shape == (1, embedder.dim)

    def broken(**changes):
        return {**good, **changes}

    with pytest.raises(TypeError, match="'input_ids' must be int64, got int32"):
        embedder.infer(broken(input_ids=good["input_ids"].astype(np.int32)))
    with pytest.raises(TypeError, match="'pixel_values' must be float32, got float64"):
        embedder.infer(broken(pixel_values=good["pixel_values"].astype(np.float64)))
    with pytest.raises(ValueError, match="'pixel_values' dim 1 must be 16"):
        embedder.infer(broken(pixel_values=good["pixel_values"][:, :8]))
    with pytest.raises(ValueError, match="'attention_mask' must have 2 dims"):
        embedder.infer(broken(attention_mask=good["attention_mask"][0]))
    with pytest.raises(ValueError, match="batch 2, expected 1"):
        embedder.infer(broken(image_mask=np.zeros(2, np.int64)))
    with pytest.raises(ValueError, match="lacks inputs \\['image_mask'\\]"):
        embedder.infer({k: v for k, v in good.items() if k != "image_mask"})
    with pytest.raises(ValueError, match="unknown inputs \\['extra'\\]"):
        embedder.infer(broken(extra=np.zeros(1, np.int64)))
    with pytest.raises(TypeError, match="NumPy array"):
        embedder.infer(broken(image_mask=[0]))


def test_encode_input_errors(artifact_dir):
    embedder = Embedder(artifact_dir, options=RuntimeOptions(lazy=True))
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode(texts=["x"], batch_size=0)
    with pytest.raises(TypeError, match="single string"):
        embedder.encode(texts="x")
    with pytest.raises(ValueError, match="equal lengths"):
        embedder.encode(texts=["a", "b"], images=[None])
    with pytest.raises(ValueError, match="backend must be"):
        Embedder(artifact_dir, backend="cuda")
    assert "not loaded" in repr(embedder)


def test_tensorrt_backend_without_tensorrt(artifact_dir):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="TensorRT"):
        Embedder(artifact_dir, backend="tensorrt")


@pytest.mark.slow
def test_base_install_in_fresh_venv_embeds(artifact_dir, tmp_path):
    """``pip install lame-embed`` (no extras) is enough to serve, and brings no torch."""
    source = tmp_path / "src"
    # Build from a copy of the work tree (tracked + new, not ignored files) so pip's in-tree
    # build leaves nothing behind in the checkout.
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, install.stdout + install.stderr
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    code = (
        "import sys, numpy as np, lame_runtime\n"
        "v = lame_runtime.Embedder(sys.argv[1]).encode(texts=['the digits are 1 and 2'])\n"
        "assert v.shape[0] == 1 and abs(float(np.linalg.norm(v)) - 1) < 1e-5\n"
        "assert 'torch' not in sys.modules and 'lame' not in sys.modules\n"
        "print(v.shape[1])"
    )
    out = subprocess.run(
        [str(python), "-c", code, str(artifact_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == Embedder(artifact_dir, options=RuntimeOptions(lazy=True)).dim
    cli = subprocess.run(
        [str(venv / "bin" / "lame-search"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0 and "index" in cli.stdout, cli.stderr


def test_spin_off_gives_the_same_vectors(artifact_dir):
    texts = ["the digits add up to 9", "the largest digit is 7"]
    spinning = Embedder(artifact_dir).encode(texts=texts)
    quiet = Embedder(artifact_dir, options=RuntimeOptions(spin=False))
    options = quiet._load_backend().session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_array_equal(spinning, quiet.encode(texts=texts))
