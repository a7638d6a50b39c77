"""lame-bench end to end on the tiny preset: four methods on one shared backbone, the ratios
derived from the raw figures, deployment rows from a real export, JSON and PNG written."""

import json

import numpy as np
import pytest

from lame.cli.bench import main
from lame.config import LameConfig, load_preset
from lame.evaluation.bench import BenchOptions, build_models, method_config, query_feed


def test_methods_share_one_backbone_and_differ_only_by_method():
    models = build_models(BenchOptions(preset="tiny"))
    assert list(models) == ["lame", "discriminative", "latent", "cot"]
    backbones = {id(m.backbone) for m in models.values()}
    assert len(backbones) == 1
    configs = {name: m.config for name, m in models.items()}
    assert configs["lame"].bottleneck_mask and configs["lame"].num_reason_tokens == 4
    assert configs["latent"].num_reason_tokens == 4 and configs["latent"].appended_reason_tokens == 0
    assert configs["discriminative"].num_reason_tokens == configs["cot"].num_reason_tokens == 0


def test_2b_preset_is_qwen2_vl_2b_sized():
    base = LameConfig.from_dict(load_preset("2b")["model"])
    config = method_config(base, "cot", 128)
    assert (config.backbone.hidden_size, config.backbone.num_layers) == (1536, 28)
    assert config.image.num_tokens == 64 and config.max_new_tokens == 128


def test_bench_cli_writes_consistent_json_and_png(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        [
            "--preset",
            "tiny",
            "--batches",
            "1,3",
            "--reps",
            "5",
            "--max-new-tokens",
            "8",
            "--threads",
            "1",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--data-out",
            str(tmp_path / "data"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "lame_vs_cot" in printed and "ort fp32" in printed
    methods = report["methods"]
    for key in ("lame_vs_cot", "lame_vs_latent", "lame_vs_discriminative"):
        other = key.split("_vs_")[1]
        per_batch = [
            methods[b]["lame"]["emb_per_s"] / methods[b][other]["emb_per_s"] for b in ("batch1", "batch3")
        ]
        assert report["ratios"][key] == pytest.approx(min(per_batch))
    for batch in ("batch1", "batch3"):
        for row in methods[batch].values():
            assert len(row["runs_ms"]) == 5
            assert row["median_ms"] == pytest.approx(float(np.median(row["runs_ms"])))
    n, k = methods["input_tokens"], report["settings"]["K"]
    assert report["ratios"]["bound_lame_vs_discriminative"] == pytest.approx(n / (n + k + 1))
    deploy = report["deployment"]
    assert deploy["precisions"] == ["fp32", "fp16", "int8"]
    ms = deploy["ms_per_batch"]["batch3"]
    assert report["ratios_by_batch"]["batch3"]["ort_int8_vs_torch"] == pytest.approx(
        ms["torch eager"] / ms["ort int8"]
    )
    assert deploy["cold_start"]["total_s"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --data-out: the docs' data files, every row with its provenance
    from lame.evaluation.tables import read_table

    columns, rows = read_table(tmp_path / "data" / "bench_methods.csv")
    assert columns == ["method", "batch 1 emb/s", "LaME is (batch 1)", "batch 3 emb/s", "LaME is (batch 3)"]
    by_method = {r["method"]: r for r in rows}
    assert float(by_method["LaME"]["batch 3 emb/s"]) == pytest.approx(
        methods["batch3"]["lame"]["emb_per_s"], abs=0.01
    )
    assert rows[0]["command"].split()[0].endswith(("lame-bench", "pytest", "__main__.py")) and rows[0]["date"]
    columns, rows = read_table(tmp_path / "data" / "bench_backends.csv")
    assert [r[columns[0]] for r in rows][0] == "PyTorch eager"


def test_bench_feeds_are_text_plus_image_queries():
    models = build_models(BenchOptions(preset="tiny"))
    feed = query_feed(models["lame"].preprocessor, 4)
    assert feed["image_mask"].tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reps", "3"], "reps must be >= 5"),
        (["--batches", "1,x"], "comma-separated"),
        (["--device", "cuda:0"], "no CUDA device"),
    ],
)
def test_bad_bench_options_give_one_line_errors(argv, message, capsys):
    pytest.importorskip("torch")
    import torch

    if "cuda" in argv[-1] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["--preset", "tiny", "--no-deploy", *argv]) != 0
    assert message in capsys.readouterr().err
