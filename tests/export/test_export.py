"""Export: constants baked in, parity per precision, manifest, calibration, gates, lint."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.torch import load_file

from lame_export.cli import main as export_main
from lame_export.onnx_export import reason_token_initializer
from lame_export.trt_lint import lint, support_table
from lame_export.validate import ParityError, row_cosines, validate
from lame_runtime.artifact.contract import sha256


def test_artifact_files_and_manifest(artifact_dir, trained_ckpt):
    manifest = json.loads((artifact_dir / "lame_artifact.json").read_text())
    for name in (
        "model.onnx",
        "model_fp16.onnx",
        "model_int8.onnx",
        "tokenizer.json",
        "preprocessor_config.json",
        "parity.json",
        "calib.npz",
    ):
        assert (artifact_dir / name).is_file(), name
    assert set(manifest["models"]) == {"fp32", "fp16", "int8"}
    for name, entry in manifest["files"].items():
        assert sha256(artifact_dir / name) == entry["sha256"], name
    config = json.loads((trained_ckpt / "config.json").read_text())
    assert manifest["embedding_dim"] == config["embed_dim"]
    assert manifest["num_reason_tokens"] == config["num_reason_tokens"]
    assert [i["name"] for i in manifest["inputs"]] == [
        "input_ids",
        "attention_mask",
        "pixel_values",
        "image_mask",
    ]
    assert manifest["outputs"][0]["name"] == "lame_embedding"
    assert manifest["special_tokens"]["embed"] >= 0
    # One instruction per query direction, copied from the checkpoint.
    assert set(manifest["instructions"]["directions"]) == {"text->image", "image->text"}
    assert all(manifest["instructions"]["directions"].values())


def test_reason_tokens_are_constants_not_inputs(artifact_dir, trained_ckpt):
    session = ort.InferenceSession(str(artifact_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    assert names == {"input_ids", "attention_mask", "pixel_values", "image_mask"}
    tokens = load_file(str(trained_ckpt / "model.safetensors"))["reason_tokens"].numpy()
    assert tokens.shape[0] > 0
    assert reason_token_initializer(artifact_dir / "model.onnx", tokens) is not None
    # ...and the search can fail: other values are not found.
    assert reason_token_initializer(artifact_dir / "model.onnx", tokens + 0.5) is None


def test_dynamic_batch_and_sequence(artifact_dir):
    graph = onnx.load(str(artifact_dir / "model.onnx"))
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input
    }
    assert dims["input_ids"] == ["batch", "sequence"]
    assert dims["pixel_values"][0] == "batch" and isinstance(dims["pixel_values"][1], int)


def test_parity_figures_meet_thresholds(artifact_dir):
    report = json.loads((artifact_dir / "parity.json").read_text())
    assert report["fp32"]["min_cosine"] >= 0.9999 and report["fp32"]["passed"]
    assert report["fp16"]["min_cosine"] >= 0.999 and report["fp16"]["finite"]
    assert report["int8"]["min_cosine"] >= 0.99
    labels = set(report["fp32"]["cases"])
    for batch in (1, 3, 8):
        for kind in ("text", "image", "text+image", "mixed"):
            assert f"b{batch}/{kind}" in labels
    assert "retrieval" in report and set(report["retrieval"]["hit@1"]) == {"fp32", "fp16", "int8"}


def test_int8_graph_has_qdq_and_fp16_graph_is_half(artifact_dir):
    int8 = onnx.load(str(artifact_dir / "model_int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp16 = onnx.load(str(artifact_dir / "model_fp16.onnx"))
    types = {i.data_type for i in fp16.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert fp16.graph.input[2].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O


def test_calibration_set_is_fixed_shape_and_keyed_by_inputs(artifact_dir):
    from lame_calibration import CalibrationReader, load

    data = load(artifact_dir / "calib.npz")
    assert set(data) == {"input_ids", "attention_mask", "pixel_values", "image_mask"}
    assert data["input_ids"].shape == data["attention_mask"].shape
    assert len({len(v) for v in data.values()}) == 1
    assert set(data["image_mask"].tolist()) == {0, 1}, "both modalities sampled"
    reader = CalibrationReader(artifact_dir / "calib.npz", batch_size=8)
    batches = iter(reader.get_next, None)
    assert sum(len(b["input_ids"]) for b in batches) == len(data["input_ids"])


def test_calibration_never_imports_torch(tmp_path, digits_dir, artifact_dir):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import lame_calibration\n"
        f"p = lame_calibration.build({str(digits_dir)!r}, {str(artifact_dir)!r}, "
        f"{str(tmp_path / 'c.npz')!r}, size=20, seed=3)\n"
        "print(lame_calibration.load(p)['input_ids'].shape[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "20"


def test_validate_detects_drift():
    ref = np.eye(4, dtype=np.float32)
    assert validate(ref, ref, 0.9999)["min_cosine"] == pytest.approx(1.0)
    bad = ref.copy()
    bad[0] = [1, 1, 0, 0]
    with pytest.raises(ParityError, match="min cosine"):
        validate(ref, bad, 0.9999)
    with pytest.raises(ParityError, match="NaN"):
        validate(ref, ref * np.nan, 0.9)
    assert row_cosines(ref, bad)[0] == pytest.approx(2**-0.5)


def test_tensorrt_lint(artifact_dir):
    report = lint(artifact_dir / "model.onnx")
    assert report["ok"], report
    assert "MatMul" in report["ops"] and not report["data_dependent_shape_ops"]
    assert set(report["versions"]) == {"10.3", "11"}
    table = support_table()
    assert "NonZero" in table["data_dependent_shape_ops"]
    assert "onnx-tensorrt" in table["source"]


def test_lint_flags_unsupported_and_data_dependent_ops(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph), str(path))
    report = lint(path)
    assert report["data_dependent_shape_ops"] == ["NonZero"] and not report["ok"]


def test_export_cli_errors_and_gate(trained_ckpt, digits_dir, tmp_path, capsys):
    assert export_main(["--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]) == 2
    assert "not found" in capsys.readouterr().err
    assert export_main(["--ckpt", str(trained_ckpt), "--out", str(tmp_path / "a"), "--int8"]) == 2
    assert "--calib-data" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_export_refuses_on_failed_gate(trained_ckpt, tmp_path, monkeypatch, capsys):
    """A failing parity gate writes nothing unless --force."""
    import lame_export.pipeline as pipeline

    monkeypatch.setitem(pipeline.THRESHOLDS, "fp32", 1.5)  # unreachable: cosine <= 1
    out = tmp_path / "art"
    assert export_main(["--ckpt", str(trained_ckpt), "--out", str(out)]) == 3
    assert "gate failed" in capsys.readouterr().err and not out.exists()
    assert export_main(["--ckpt", str(trained_ckpt), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "parity.json").read_text())["failures"]


def test_export_never_replaces_a_foreign_directory(trained_ckpt, tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    assert export_main(["--ckpt", str(trained_ckpt), "--out", str(precious)]) == 2
    assert "not a LaME output" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep"


def test_export_output_is_quiet_and_names_each_int8_graph(trained_ckpt, digits_dir, tmp_path):
    """No "torchvision is not installed" lines (the exporter's registry logs one per
    torchvision op when it is absent, once per process: hence a fresh process), and every
    int8 progress line names the graph it is quantising (the full graph and the text graph
    run the same three steps)."""
    import subprocess
    import sys

    out = tmp_path / "quiet"
    code = "import sys; from lame_export.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--ckpt",
            str(trained_ckpt),
            "--out",
            str(out),
            "--int8",
            "--calib-data",
            str(digits_dir),
            "--calib-size",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = run.stdout + run.stderr
    assert run.returncode in (0, 3), text  # 3: an 8-step model may fail the retrieval gate
    assert "exporting fp32 ONNX" in run.stderr, text  # the export itself ran
    assert "torchvision" not in text, text
    int8_lines = [
        line
        for line in run.stderr.splitlines()
        if "int8" in line and ("pre-processing" in line or "calibrating" in line or "quantising" in line)
    ]
    assert len(int8_lines) == 6, run.stderr  # 3 steps x (full graph, text graph)
    assert {line.split("int8 ")[1].split(":")[0] for line in int8_lines} == {
        "model_int8.onnx",
        "model_text_int8.onnx",
    }, int8_lines
