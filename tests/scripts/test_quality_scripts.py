"""scripts/quality/quality_parallel.py (job order, dependencies, dataset variants) and
scripts/quality/quality_table.py (mean ± sd over seeds, per-start baselines, variant rows, probes)."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "quality"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


quality_parallel = _script("quality_parallel")
quality_table = _script("quality_table")


def test_jobs_keep_row_order_and_variants_share_the_pretrained_backbone(tmp_path):
    root = tmp_path / "q"
    _, jobs = quality_parallel.parse_jobs(
        [
            "--seeds",
            "0",
            "1",
            "--root",
            str(root),
            "--",
            "lm",
            "gen-lame",
            "--variant",
            "reasoning=data/r",
            "lame",
            "--variant",
            "=",
            "wall-latent",
        ]
    )
    assert [(j.row, j.seed, j.root.name, j.data) for j in jobs] == [
        ("lm", 0, "q", "data/digits"),
        ("lm", 1, "q", "data/digits"),
        ("gen-lame", 0, "q", "data/digits"),
        ("gen-lame", 1, "q", "data/digits"),
        ("lame", 0, "q-reasoning", "data/r"),
        ("lame", 1, "q-reasoning", "data/r"),
        ("wall-latent", 0, "q", "data/digits"),
        ("wall-latent", 1, "q", "data/digits"),
    ]
    assert (root.parent / "q-reasoning" / "lm").resolve() == (root / "lm").resolve()
    gen = jobs[2]
    assert gen.needs(root) == [root / "lm" / "seed0" / "generate.json"]
    assert jobs[0].done_file() == root / "lm" / "seed0" / "generate.json"
    assert jobs[-1].needs(root) == [
        root / "lame" / "seed1" / "eval.json",
        root / "latent" / "seed1" / "eval.json",
    ]


def test_rows_must_follow_a_double_dash():
    with pytest.raises(SystemExit):
        quality_parallel.parse_jobs(["--seeds", "0", "lame"])


def _eval(hit, tier2):
    return {
        "hit@1": hit,
        "ndcg@10": hit + 10,
        "per_group": {"tier1": {"hit@1": hit + 5}, "tier2": {"hit@1": tier2}},
        "per_task": {"tier2.sum.i2t": {"hit@1": tier2}},
    }


def _write(root, row, values, file="eval.json"):
    for seed, value in enumerate(values):
        path = root / row / f"seed{seed}" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def test_table_reports_mean_sd_and_compares_each_row_with_its_own_start(tmp_path, capsys):
    main, variant = tmp_path / "quality", tmp_path / "quality-reasoning"
    _write(main, "discriminative", [_eval(10, 2), _eval(12, 4), _eval(11, 3)])
    _write(main, "gen-discriminative", [_eval(30, 9), _eval(31, 10), _eval(29, 11)])
    _write(main, "gen-lame", [_eval(20, 9), _eval(21, 10), _eval(22, 11)])
    _write(variant, "gen-lame", [_eval(35, 20), _eval(36, 21), _eval(34, 22)])
    _write(
        main,
        "gen-lame",
        [
            {
                "reconstruction": {},
                "probes": {
                    "sum": {"reason": {"test_acc": a}, "embed": {"test_acc": 1.0}, "constant_acc": 5.0}
                },
            }
            for a in (40.0, 50.0, 60.0)
        ],
        file="probe.json",
    )
    quality_table.main([str(main), str(variant)])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    gen_lame = [line for line in out.splitlines() if line.startswith("| LaME, generative init |")]
    assert f"{statistics.mean([20, 21, 22]):.2f} ± {statistics.stdev([20, 21, 22]):.2f}" in gen_lame[0]
    # gen-lame is compared with gen-discriminative (21 - 30 overall, equal tier 2), not with
    # discriminative; the equal tier 2 is flagged as noise, the 9 points are not.
    diff = [
        line for line in out.splitlines() if line.startswith("| LaME, generative init | `gen-discriminative`")
    ]
    cells = diff[0].split(" | ")
    assert cells[2].startswith("-9.00") and "(not significant)" not in cells[2]
    assert cells[4].startswith("+0.00") and "(not significant)" in cells[4]
    variant_diff = [
        line for line in out.splitlines() if line.startswith("| LaME, generative init [reasoning] | `gen-")
    ]
    assert variant_diff and "+5.00" in variant_diff[0]
    assert "LaME, generative init [reasoning]" in rows
    probe = [line for line in out.splitlines() if "50.00 ± 10.00" in line]
    assert probe and probe[0].startswith("| LaME, generative init | 3 |")


def test_validation_sizes_and_long_rows(tmp_path, capsys):
    """val.json rows get their own table, by_dimension a size table, and a *-long row is
    compared with the baseline run as long (not with the 500-step one)."""
    root = tmp_path / "quality"
    sized = [
        dict(
            _eval(h, t),
            by_dimension={
                "32": {"hit@1": h - 4, "per_group": {"tier2": {"hit@1": t - 1}}},
                "128": {"hit@1": h, "per_group": {"tier2": {"hit@1": t}}},
            },
        )
        for h, t in ((20, 9), (22, 11), (24, 13))
    ]
    _write(root, "gen-lame", sized)
    _write(root, "gen-lame", [_eval(18, 8), _eval(19, 9), _eval(20, 10)], file="val.json")
    _write(root, "gen-discriminative", [_eval(30, 9), _eval(31, 10), _eval(29, 11)])
    _write(root, "gen-discriminative-long", [_eval(40, 5), _eval(41, 6), _eval(42, 7)])
    _write(root, "gen-lame-long", [_eval(40, 15), _eval(41, 16), _eval(42, 17)])
    quality_table.main([str(root)])
    out = capsys.readouterr().out.splitlines()
    val = out[out.index(next(line for line in out if line.startswith("Validation split"))) :]
    assert any(line.startswith("| LaME, generative init | 3 | 19.00 ± 1.00") for line in val)
    sizes = out[out.index(next(line for line in out if line.startswith("Embedding size"))) :]
    header = next(line for line in sizes if line.startswith("| run |"))
    assert "hit@1 @32" in header and "tier 2 @128" in header
    assert any(
        line.startswith(
            "| LaME, generative init | 3 | 18.00 ± 2.00 | 22.00 ± 2.00 | 10.00 ± 2.00 | 11.00 ± 2.00 |"
        )
        for line in sizes
    )
    long = next(
        line
        for line in out
        if line.startswith("| LaME, generative init, 1,000 steps | `gen-discriminative-long`")
    )
    assert long.split(" | ")[4].startswith("+10.00")


def test_data_out_writes_each_printed_table_with_its_provenance(tmp_path, capsys):
    """--data-out: one data file per printed table (the docs render them), the same cells as
    the markdown, and every row carrying the command, versions, machine and date."""
    from lame.evaluation.tables import PROVENANCE, parse_markdown_tables, read_table

    root = tmp_path / "quality"
    _write(root, "discriminative", [_eval(10, 2), _eval(12, 4), _eval(11, 3)])
    _write(root, "lame", [_eval(14, 3), _eval(15, 4), _eval(16, 5)])
    _write(root, "lame", [_eval(13, 2), _eval(14, 3), _eval(15, 4)], file="val.json")
    out_dir = tmp_path / "data"
    command = "STEPS=500 python scripts/quality/quality_parallel.py -- lame discriminative"
    quality_table.main([str(root), "--data-out", str(out_dir), "--prefix", "q", "--command", command])
    printed = parse_markdown_tables(capsys.readouterr().out)
    files = ["q.csv", "q_diff.csv", "q_tasks.csv", "q_val.csv"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(files)
    for name, (header, rows) in zip(files, printed, strict=True):
        columns, data = read_table(out_dir / name)
        assert columns == header
        assert [[row[c] for c in columns] for row in data] == rows
        assert all(row["command"] == command and row["date"] and row["versions"] for row in data)
        assert all(set(PROVENANCE) <= set(row) for row in data)
    assert read_table(out_dir / "q.csv")[1][0]["hit@1"] == "15.00 ± 1.00"  # lame: 14, 15, 16
