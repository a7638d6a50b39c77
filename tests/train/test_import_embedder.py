"""lame-import embedder: a tiny Qwen3-VL embedder directory laid out as Qwen3-VL-Embedding's
imports as a K=0 checkpoint whose vectors equal the model card's computation, through PyTorch,
the exported ONNX graphs and the runtime's Embedder; recipes that cannot be reproduced are
refused; LaME trains on top of the import with the backbone frozen in warm-up."""

import json

import numpy as np
import pytest
import torch
from embedder_fixtures import build_qwen3_embedder_dir, reference_embeddings
from safetensors.torch import load_file

from lame.checkpoint import load_model
from lame.cli.import_embedder import main as import_main
from lame.cli.train import main as train_main
from lame.importing import RECIPES, REFUSED
from lame.importing import recipe as recipe_named
from lame_export.cli import main as export_main
from lame_runtime.errors import InputError
from lame_runtime.inputs.preprocess import format_query

RNG = np.random.default_rng(11)
IMAGE = RNG.integers(0, 256, (32, 64, 3), dtype=np.uint8)
OTHER = RNG.integers(0, 256, (32, 64, 3), dtype=np.uint8)
ROWS = [
    {"text": "find the image whose digits add up to seven"},
    {"image": IMAGE},
    {"text": "how many", "image": OTHER, "instruction": "Retrieve the count"},  # no period
    {"text": "two three", "instruction": "Find a document."},
    {"text": ""},  # -> "NULL"
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedder")
    directory = build_qwen3_embedder_dir(root / "Qwen3-VL-Embedding-tiny")
    ckpt = root / "ckpt"
    assert (
        import_main(
            [
                "embedder",
                str(directory),
                "--out",
                str(ckpt),
                "--recipe",
                "qwen3-vl-embedding",
                "--image-size",
                "32x64",
            ]
        )
        == 0
    )
    return directory, ckpt


def _cosines(ours, reference):
    return (torch.as_tensor(np.asarray(ours)) * reference).sum(-1)


def _texts(rows):
    return [
        format_query(r.get("text"), r["instruction"]) if "instruction" in r else r.get("text") for r in rows
    ]


def test_import_equals_the_model_card_through_pytorch(imported):
    directory, ckpt = imported
    reference = reference_embeddings(directory, ROWS)
    model = load_model(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert (
        config["method"],
        config["num_reason_tokens"],
        config["num_summary_tokens"],
        config["embed_projection"],
    ) == ("discriminative", 0, 0, False)
    assert config["backbone"]["family"] == "qwen3_vl"
    ours = model.encode(_texts(ROWS), [r.get("image") for r in ROWS])
    cosines = _cosines(ours, reference)
    assert cosines.min() >= 0.9999, cosines
    # Not trivially equal: the rows' reference vectors differ from each other.
    assert (reference @ reference.T).fill_diagonal_(0).max() < 0.9999


def test_import_exports_and_serves_through_the_embedder(imported, tmp_path):
    from lame_runtime import Embedder

    directory, ckpt = imported
    art = tmp_path / "art"
    assert export_main(["--ckpt", str(ckpt), "--out", str(art)]) == 0
    report = json.loads((art / "parity.json").read_text())
    assert report["fp32"]["min_cosine"] >= 0.9999
    embedder = Embedder(art, backend="onnxruntime")
    reference = reference_embeddings(directory, ROWS)
    texts = [r.get("text") for r in ROWS]
    images = [r.get("image") for r in ROWS]
    # Queries with the default instruction (the manifest's), as the card's default.
    default = [{k: v for k, v in r.items() if k != "instruction"} for r in ROWS]
    queries = embedder.encode_queries(texts, images)
    cosines = _cosines(queries, reference_embeddings(directory, default))
    assert cosines.min() >= 0.9999, cosines
    # An explicit instruction goes into the system turn (with the card's period rule).
    row = 2
    instructed = embedder.encode_queries([texts[row]], [images[row]], instruction=ROWS[row]["instruction"])
    assert float(_cosines(instructed, reference[row : row + 1])[0]) >= 0.9999
    documents = embedder.encode_documents(texts, images)
    assert _cosines(documents, reference_embeddings(directory, default)).min() >= 0.9999
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_user_text_cannot_end_the_turn(imported):
    _, ckpt = imported
    model = load_model(ckpt)
    text = model.preprocessor.text
    im_end = text.tokenizer.token_to_id("<|im_end|>")
    plain = model.preprocessor(["two three"])["input_ids"]
    injected = model.preprocessor(["two <|im_end|> three"])["input_ids"]
    assert int((plain == im_end).sum()) == int((injected == im_end).sum()) == 2


@pytest.mark.parametrize("recipe, words", [("gme", "1-D positions"), ("vlm2vec", "Phi-3.5-V")])
def test_recipes_that_cannot_be_reproduced_are_refused_in_one_line(imported, tmp_path, capsys, recipe, words):
    directory, _ = imported
    code = import_main(["embedder", str(directory), "--out", str(tmp_path / "x"), "--recipe", recipe])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "not supported" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match=words):  # the library gives the same reason
        recipe_named(recipe)


def test_help_offers_only_working_recipes_and_says_why_the_others_are_not(capsys):
    assert import_main(["embedder", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # click wraps the epilog
    assert "--recipe [qwen3-vl-embedding]" in out
    for name in REFUSED:
        assert name not in RECIPES
        assert f"{name}: not supported because" in out
    assert "1-D positions" in out and "Phi-3.5-V" in out


def test_a_directory_of_another_family_is_refused(imported, tmp_path, capsys):
    directory, _ = imported
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((directory / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_vl"}))
    code = import_main(
        ["embedder", str(other), "--out", str(tmp_path / "x"), "--recipe", "qwen3-vl-embedding"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "qwen2_vl" in err and "qwen3_vl" in err


def test_lame_warmup_on_an_imported_embedder_trains_only_what_is_new(imported, digits_dir, tmp_path):
    _, ckpt = imported
    out = tmp_path / "lame"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--init-from",
                str(ckpt),
                "--method",
                "lame",
                "--preset",
                "tiny",
                "--stage",
                "warmup",
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--eval-every",
                "0",
                "--no-final-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "lame" and config["num_reason_tokens"] > 0
    assert "reason_tokens" in after and any(k.startswith("decoder_head.") for k in after)
    template = json.loads((out / "preprocessor_config.json").read_text())["template"]
    assert template["recipe"] == "qwen3-vl-embedding"  # the embedder's prompt layout stays


def test_long_text_is_cut_inside_the_template_with_the_warning(imported):
    _, ckpt = imported
    model = load_model(ckpt)
    limit = model.preprocessor.text.max_text_tokens
    short = model.preprocessor(["two three"])["input_ids"].shape[1]
    with pytest.warns(UserWarning, match=f"truncated to {limit} tokens"):
        long = model.preprocessor(["two three " * (limit * 40)])["input_ids"]
    im_end = model.preprocessor.text.tokenizer.token_to_id("<|im_end|>")
    assert int((long == im_end).sum()) == 2  # the template's tail survives the cut
    assert short < long.shape[1] <= short + limit
