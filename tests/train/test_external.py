"""Tests for lame.data.external (MMEB-v2 and MRMR converters), relevance-aware metrics in
lame.evaluation.evaluate, the eval-row ``relevance``/``metric`` keys and the per-task metric of lame-eval.

Scores come from a deterministic numpy encoder (the metric is what is under test): every query
embeds to [1, 0]; a candidate embeds to [s, 1] where s is its image's pixel value / 100 or the
number after ``s=`` in its text, so the score of a candidate is exactly s.
"""

from __future__ import annotations

import json
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lame.cli.data import main as data_main
from lame.data.dataset import DatasetError, load_eval
from lame.data.external import convert_mmeb, convert_mrmr
from lame.evaluation.evaluate import evaluate, rank_of_positive, row_metrics
from lame_runtime.inputs.images import ImageConfig


def fake_encode(texts, images, batch_size=64, instruction=None) -> np.ndarray:
    vectors = []
    for text, image in zip(texts, images):
        if text and "query" in text:
            vectors.append([1.0, 0.0])
        elif image:
            vectors.append([Image.open(image).getpixel((0, 0)) / 100.0, 1.0])
        else:
            vectors.append([float(re.search(r"s=([-\d.]+)", text).group(1)), 1.0])
    return np.asarray(vectors, dtype=np.float32)


def png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ndcg(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)


# ------------------------------------------------------------------ inputs

MMEB_IMAGE_ROWS = [
    # The text positive scores 0.9 but a negative scores 0.95: rank 2.
    {
        "qry_inst": "<|image_1|> Find the caption.",
        "qry_text": "<|image_1|>\nquery one",
        "qry_img_path": "q/one.png",
        "tgt_text": ["pos s=0.9", "neg s=0.5", "neg s=0.95"],
        "tgt_img_path": ["", "", ""],
    },
    # Image targets (with VLM2Vec's target prompt); the positive (pixel 80) ranks first.
    {
        "qry_inst": "Find the image.",
        "qry_text": "query two",
        "qry_img_path": None,
        "tgt_text": ["<|image_1|>\nRepresent the given image."] * 3,
        "tgt_img_path": ["t/pos.png", "t/a.png", "t/b.png"],
    },
]
MMEB_VISDOC_ROWS = [
    # Positive page 50 ties with a negative (ranks below it) and loses to 70: rank 3.
    {"qry_text": "query about a chart", "tgt_img_path": ["p/pos.png", "p/tie.png", "p/hi.png"]},
]


@pytest.fixture
def mmeb_root(tmp_path) -> Path:
    root = tmp_path / "mmeb_images"
    for name, value in [
        ("q/one.png", 0),
        ("t/pos.png", 80),
        ("t/a.png", 30),
        ("t/b.png", 20),
        ("p/pos.png", 50),
        ("p/tie.png", 50),
        ("p/hi.png", 70),
    ]:
        png(root / name, value)
    write_jsonl(tmp_path / "CIRR.jsonl", MMEB_IMAGE_ROWS)
    (tmp_path / "ViDoRe.json").write_text(json.dumps(MMEB_VISDOC_ROWS))
    return root


@pytest.fixture
def mrmr_dir(tmp_path) -> Path:
    src = tmp_path / "mrmr_knowledge"
    png(src / "img/q1a.png", 0)
    png(src / "img/q1b.png", 0)
    png(src / "img/d2.png", 70)
    write_jsonl(
        src / "queries.jsonl",
        [
            {
                "id": "q1",
                "text": "<image> query: which <image> chart",
                "image": ["img/q1a.png", "img/q1b.png"],
                "instruction": "Find the document.",
            },
            {"_id": "q2", "text": "query two", "candidates": ["d2", "d4"]},
            {"id": "q3", "text": "query without judgements"},
        ],
    )
    write_jsonl(
        src / "corpus.jsonl",
        [
            {"_id": "d1", "text": "s=0.9"},
            {"_id": "d2", "title": "a page", "image": "img/d2.png"},
            {"_id": "d3", "text": "s=0.5"},
            {"_id": "d4", "text": "s=0.2"},
        ],
    )
    (src / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t1\nq2\td4\t1\nq2\td2\t0\nq3\td1\t0\n"
    )
    return src


# ------------------------------------------------------------------ MMEB


def test_mmeb_cli_converts_and_loads(tmp_path, mmeb_root, capsys):
    out = tmp_path / "ds"
    assert (
        data_main(["mmeb", str(tmp_path / "CIRR.jsonl"), "--image-root", str(mmeb_root), "--out", str(out)])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"out": str(out), "task": "CIRR", "rows": 2, "images": 4, "warnings": []}
    raw = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert raw[0]["query"] == {"text": "query one", "image": "images/q/one.png"}
    assert raw[0]["instruction"] == "Find the caption." and raw[0]["metric"] == "hit@1"
    assert raw[1]["candidates"][0] == {"text": "Represent the given image.", "image": "images/t/pos.png"}
    rows = load_eval(out)
    assert [r.task for r in rows] == ["CIRR", "CIRR"] and rows[0].label == 0
    assert rows[1].candidates[1].image == str((out / "images/t/a.png").resolve())
    assert not list(out.rglob("*.tmp"))


def test_mmeb_metrics_image_and_visdoc(tmp_path, mmeb_root):
    out = tmp_path / "ds"
    convert_mmeb(tmp_path / "CIRR.jsonl", mmeb_root, out)
    convert_mmeb(tmp_path / "ViDoRe.json", mmeb_root, out, family="visdoc", append=True)
    result = evaluate(fake_encode, load_eval(out))
    cirr, vidore = result["per_task"]["CIRR"], result["per_task"]["ViDoRe"]
    assert cirr["metric"] == "hit@1" and cirr["score"] == cirr["hit@1"] == 50.0
    assert cirr["ndcg@5"] == round(100 * (ndcg(2) + 1.0) / 2, 2)
    assert vidore["metric"] == "ndcg@5" and vidore["score"] == 50.0  # rank 3: 1/log2(4)
    assert vidore["hit@1"] == 0.0 and vidore["n"] == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ({"qry_text": "q", "tgt_text": ["a"]}, r"x\.jsonl:2: needs at least 2 targets"),
        ({"qry_text": "q"}, r"x\.jsonl:2: missing 'tgt_text' and 'tgt_img_path'"),
        ({"tgt_text": ["a", "b"]}, r"x\.jsonl:2: missing 'qry_text' and 'qry_img_path'"),
        (
            {"qry_text": "q", "tgt_text": ["a", "b"], "tgt_img_path": ["t/a.png"]},
            r"x\.jsonl:2: 'tgt_text' has 2 entries but 'tgt_img_path' has 1",
        ),
        ({"qry_text": "q", "tgt_text": "a"}, r"x\.jsonl:2: 'tgt_text' must be an array"),
        (
            {"qry_text": "q", "tgt_video_path": ["v/a", "v/b"]},
            r"x\.jsonl:2: 'tgt_video_path' is a video task's key; convert it with --family video",
        ),
        (
            {"qry_text": "q", "tgt_text": ["a", "<|image_1|>"]},
            r"x\.jsonl:2: tgt_text\[1\]/tgt_img_path\[1\] has neither text, image nor video",
        ),
        (
            {"qry_text": "q", "tgt_text": ["a", ""], "tgt_img_path": ["", "t/gone.png"]},
            r"x\.jsonl:2: tgt_text\[1\]/tgt_img_path\[1\] image not found: t/gone\.png",
        ),
        (
            {"qry_text": "q", "qry_img_path": "../escape.png", "tgt_text": ["a", "b"]},
            r"x\.jsonl:2: qry_text/qry_img_path must be relative to the image root",
        ),
    ],
)
def test_mmeb_errors_name_line_and_field(tmp_path, mmeb_root, row, message):
    path = write_jsonl(tmp_path / "x.jsonl", [MMEB_IMAGE_ROWS[0], row])
    with pytest.raises(DatasetError, match=message):
        convert_mmeb(path, mmeb_root, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()  # nothing is written before every row validates


def test_mmeb_cli_errors_and_existing_output(tmp_path, mmeb_root, capsys):
    out, cirr = tmp_path / "ds", str(tmp_path / "CIRR.jsonl")
    base = ["mmeb", cirr, "--image-root", str(mmeb_root), "--out", str(out)]
    assert data_main(base) == 0
    assert data_main(base) == 2
    assert "eval.jsonl exists; pass --append" in capsys.readouterr().err
    assert data_main(base + ["--append"]) == 2
    assert "already holds task 'CIRR'" in capsys.readouterr().err
    assert data_main(base + ["--append", "--task", "CIRR2"]) == 0
    assert data_main(base + ["--overwrite", "--family", "visdoc"]) == 0
    assert {r.metric for r in load_eval(out)} == {"ndcg@5"} and len(load_eval(out)) == 2
    assert (
        data_main(
            [
                "mmeb",
                str(tmp_path / "none.jsonl"),
                "--image-root",
                str(mmeb_root),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "none.jsonl: file not found" in capsys.readouterr().err


def _frames(folder: Path, values: list[int]) -> None:
    for index, value in enumerate(values):
        png(folder / f"{index:04d}.png", value)


def test_mmeb_video_family_copies_frame_folders_and_files(tmp_path, mmeb_root, capsys):
    root = tmp_path / "video_root"
    _frames(root / "msrvtt" / "video7010", [10, 20, 30])
    _frames(root / "msrvtt" / "video7011", [40, 50])
    (root / "msrvtt" / "video7011" / "info.txt").write_text("not a frame")
    (root / "msrvtt" / "video7012.mp4").write_bytes(b"a video file; only copied")
    rows = [
        {
            "qry_inst": "Find the video.",
            "qry_text": "<|video_pad|> a man is cooking",
            "tgt_text": ["", "", ""],
            "tgt_video_path": ["msrvtt/video7010", "msrvtt/video7011", "msrvtt/video7012.mp4"],
        },
        {
            "qry_text": "what happens?",
            "qry_video_path": "msrvtt/video7011",
            "tgt_text": ["cooking", "running"],
        },
    ]
    out = tmp_path / "ds"
    args = ["mmeb", str(write_jsonl(tmp_path / "MSR-VTT.jsonl", rows)), "--image-root", str(root)]
    assert data_main([*args, "--family", "video", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "MSR-VTT" and summary["rows"] == 2 and summary["videos"] == 3
    first, second = load_eval(out)
    assert first.query.text == "a man is cooking" and first.metric == "hit@1"
    assert [Path(c.video).relative_to(out).as_posix() for c in first.candidates] == [
        "images/msrvtt/video7010",
        "images/msrvtt/video7011",
        "images/msrvtt/video7012.mp4",
    ]
    assert sorted(p.name for p in (out / "images/msrvtt/video7011").iterdir()) == ["0000.png", "0001.png"]
    assert second.query.video == first.candidates[1].video and second.query.text == "what happens?"
    # The same rows without --family video: the video keys are named, nothing is written.
    with pytest.raises(DatasetError, match=r"MSR-VTT\.jsonl:1: 'tgt_video_path' is a video task's key"):
        convert_mmeb(tmp_path / "MSR-VTT.jsonl", root, tmp_path / "other")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "video, message",
    [
        ("msrvtt/none", r"x\.jsonl:1: qry_text/qry_img_path/qry_video_path video file or folder not found"),
        ("msrvtt/empty", r"x\.jsonl:1: qry_text/qry_img_path/qry_video_path folder holds no frame files"),
        ("../out", r"x\.jsonl:1: qry_text/qry_img_path/qry_video_path must be relative to the image root"),
    ],
)
def test_mmeb_video_errors(tmp_path, video, message):
    root = tmp_path / "video_root"
    (root / "msrvtt" / "empty").mkdir(parents=True)
    path = write_jsonl(tmp_path / "x.jsonl", [{"qry_video_path": video, "tgt_text": ["a", "b"]}])
    with pytest.raises(DatasetError, match=message):
        convert_mmeb(path, root, tmp_path / "ds", family="video")
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ MRMR


def test_mrmr_cli_converts_with_graded_relevance(tmp_path, mrmr_dir, capsys):
    out = tmp_path / "ds"
    assert data_main(["mrmr", str(mrmr_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["task"] == "mrmr_knowledge" and summary["rows"] == 2
    assert "several images" not in captured.err
    assert "1 queries skipped: no relevant candidate: q3" in captured.err
    rows = load_eval(out)
    q1, q2 = rows
    assert q1.query.text == "query: which chart"
    assert [Path(i).relative_to(out).as_posix() for i in q1.query.images] == [
        "images/img/q1a.png",
        "images/img/q1b.png",
    ]  # an interleaved query keeps all its images, in order
    assert q1.instruction == "Find the document." and q1.metric == "ndcg@10"
    assert q1.relevance == [2.0, 0.0, 1.0, 0.0] and q1.label == 0
    assert q1.candidates[1].text == "a page" and q1.candidates[1].image is not None
    assert [c.text for c in q2.candidates] == ["a page", "s=0.2"]
    assert q2.relevance == [0.0, 1.0] and q2.label == 1


def test_mrmr_ndcg_hand_computed(tmp_path, mrmr_dir):
    out = tmp_path / "ds"
    convert_mrmr(mrmr_dir, out, task="mrmr")
    result = evaluate(fake_encode, load_eval(out))
    # q1 ranks d1 (gain 2), d2 (0), d3 (1), d4 (0); q2 ranks d2 (0) above d4 (1).
    q1 = (2 / math.log2(2) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    q2 = 1 / math.log2(3)
    task = result["per_task"]["mrmr"]
    assert task["metric"] == "ndcg@10"
    assert task["score"] == task["ndcg@10"] == round(100 * (q1 + q2) / 2, 2)
    assert task["hit@1"] == 50.0


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: (s / "qrels.tsv").write_text("q1\tdx\t1\n"),
            r"qrels\.tsv:1: doc id 'dx' is not in corpus\.jsonl",
        ),
        (lambda s: (s / "qrels.tsv").write_text("q1\td1\tmany\n"), r"qrels\.tsv:1: score 'many'"),
        (lambda s: (s / "qrels.tsv").write_text("q1\td1\n"), r"qrels\.tsv:1: expected query-id"),
        (lambda s: (s / "qrels.tsv").write_text("q1\td1\t-1\n"), r"qrels\.tsv:1: 'score' must be"),
        (lambda s: (s / "qrels.tsv").unlink(), r"no qrels file"),
        (
            lambda s: write_jsonl(s / "corpus.jsonl", [{"_id": "d1", "text": "a"}, {"_id": "d1"}]),
            r"corpus\.jsonl:2: duplicate id 'd1' \(first at corpus\.jsonl:1\)",
        ),
        (lambda s: write_jsonl(s / "corpus.jsonl", [{"text": "a"}]), r"corpus\.jsonl:1: missing 'id'"),
        (
            lambda s: write_jsonl(s / "queries.jsonl", [{"id": "q1", "text": "q", "image": "no.png"}]),
            r"queries\.jsonl:1: text/image image not found: no\.png",
        ),
        (
            lambda s: write_jsonl(s / "queries.jsonl", [{"id": "q1", "text": "q", "candidates": ["d9"]}]),
            r"queries\.jsonl:1: 'candidates' must be an array of at least 2",
        ),
        (
            lambda s: write_jsonl(s / "queries.jsonl", [{"id": 1, "text": "q", "candidates": ["d1", 7]}]),
            r"queries\.jsonl:1: 'candidates' names unknown doc ids \['7'\]",
        ),
        (
            lambda s: write_jsonl(s / "queries.jsonl", [{"id": "q3", "text": "q"}]),
            r"no query has a relevant candidate",
        ),
    ],
)
def test_mrmr_errors(tmp_path, mrmr_dir, edit, message):
    edit(mrmr_dir)
    with pytest.raises(DatasetError, match=message):
        convert_mrmr(mrmr_dir, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_mrmr_jsonl_qrels_and_image_root(tmp_path, mrmr_dir):
    (mrmr_dir / "qrels.tsv").unlink()
    write_jsonl(
        mrmr_dir / "qrels.jsonl",
        [{"query_id": "q1", "doc_id": "d3", "score": 1}, {"query_id": "q9", "doc_id": "d1", "score": 1}],
    )
    summary = convert_mrmr(mrmr_dir, tmp_path / "ds", image_root=mrmr_dir)
    assert summary["rows"] == 1
    assert any("qrels query ids not in queries.jsonl (ignored): q9" in w for w in summary["warnings"])
    assert load_eval(tmp_path / "ds")[0].relevance == [0.0, 0.0, 1.0, 0.0]


# ------------------------------------------------------------------ metrics


def test_single_positive_metrics_unchanged():
    """Rows without relevance score exactly as the rank_of_positive formula did."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        scores = rng.choice([0.1, 0.5, 0.9, np.nan, np.inf, -np.inf], size=rng.integers(2, 14))
        label = int(rng.integers(len(scores)))
        rank = rank_of_positive(scores, label)
        expected = {"hit@1": float(rank == 1)}
        expected.update({f"ndcg@{k}": 1.0 / math.log2(rank + 1) if rank <= k else 0.0 for k in (5, 10)})
        assert row_metrics(scores, label) == expected, (scores, label)


def test_graded_ties_count_against_the_model():
    # 0.9 (gain 0) first; the tie at 0.5 puts the lower gain (1) before the higher (2).
    metrics = row_metrics(np.array([0.5, 0.5, 0.9]), label=1, relevance=[1, 2, 0])
    assert metrics["hit@1"] == 0.0
    assert metrics["ndcg@5"] == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3)))
    assert row_metrics(np.full(3, np.nan), 0, [1, 1, 0])["ndcg@10"] == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )
    assert row_metrics(np.array([0.1, 0.2, 0.3]), 2, [0, 1, 3])["ndcg@5"] == 1.0


# ------------------------------------------------------------------ loader


def eval_dir(tmp_path: Path, rows: list) -> Path:
    write_jsonl(tmp_path / "eval.jsonl", rows)
    return tmp_path


ROW = {"query": {"text": "q"}, "candidates": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}


def test_loader_relevance_label_metric_and_unknown_keys(tmp_path):
    rows = load_eval(
        eval_dir(
            tmp_path,
            [
                {**ROW, "relevance": [0, 2, 2], "metric": "ndcg@10", "id": "q1", "source": {"x": 1}},
                {**ROW, "relevance": [1, 0, 1.5], "label": 2, "metric": "ndcg@10"},
                {**ROW, "task": "other"},
            ],
        )
    )
    assert rows[0].relevance == [0.0, 2.0, 2.0] and rows[0].label == 1
    assert rows[1].label == 2 and rows[1].metric == "ndcg@10"
    assert rows[2].relevance is None and rows[2].metric == "hit@1"


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"relevance": [1, 0]}, r"'relevance' has 2 entries for 3 candidates"),
        ({"relevance": [1, -1, 0]}, r"relevance\[1\] must be a non-negative number, got -1"),
        ({"relevance": [1, True, 0]}, r"relevance\[1\] must be a non-negative number, got true"),
        ({"relevance": [1, "2", 0]}, r"relevance\[1\] must be a non-negative number"),
        ({"relevance": [0, 0, 0]}, r"'relevance' has no positive entry"),
        ({"relevance": {"a": 1}}, r"'relevance' must be an array of numbers, got object"),
        ({"relevance": [1, 2, 0], "label": 0}, r"label 0 has relevance 1, below the highest 2"),
        ({"metric": "map"}, r"'metric' must be one of hit@1, ndcg@5, ndcg@10, got \"map\""),
    ],
)
def test_loader_rejects_bad_relevance_and_metric(tmp_path, extra, message):
    with pytest.raises(DatasetError, match=r"^eval\.jsonl:2: " + message):
        load_eval(eval_dir(tmp_path, [ROW, {**ROW, **extra}]))


def test_loader_rejects_mixed_metrics_in_a_task(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"^eval\.jsonl:2: task 'default' uses metric "
        r"'ndcg@5' but eval\.jsonl:1 set 'hit@1'",
    ):
        load_eval(eval_dir(tmp_path, [ROW, {**ROW, "metric": "ndcg@5"}]))


# ------------------------------------------------------------------ lame-eval


def test_lame_eval_reports_the_metric_of_each_family(tmp_path, mmeb_root, mrmr_dir, monkeypatch, capsys):
    import lame
    from lame.cli.evaluate import main as eval_main

    out = tmp_path / "ds"
    convert_mmeb(tmp_path / "CIRR.jsonl", mmeb_root, out)
    convert_mmeb(tmp_path / "ViDoRe.json", mmeb_root, out, family="visdoc", append=True)
    convert_mrmr(mrmr_dir, out, task="mrmr", append=True)
    # A stand-in model: the numpy encoder, reading images as a native-resolution model would
    # (the MRMR query keeps its two images, which a fixed-size model refuses by row).
    native = types.SimpleNamespace(image=ImageConfig(resolution="native"))
    fake = types.SimpleNamespace(encode=fake_encode, encode_documents=fake_encode, preprocessor=native)
    monkeypatch.setattr(lame, "load", lambda ckpt, device=None: fake)
    report = tmp_path / "eval.json"
    assert eval_main(["--ckpt", str(tmp_path), "--data", str(out), "--out", str(report)]) == 0
    captured = capsys.readouterr()
    per_task = json.loads(captured.out)["per_task"]
    assert json.loads(report.read_text())["per_task"] == per_task
    assert {t: v["metric"] for t, v in per_task.items()} == {
        "CIRR": "hit@1",
        "ViDoRe": "ndcg@5",
        "mrmr": "ndcg@10",
    }
    assert "CIRR: hit@1 = 50.00 (n=2)" in captured.err
    assert "ViDoRe: ndcg@5 = 50.00 (n=1)" in captured.err
    assert f"mrmr: ndcg@10 = {per_task['mrmr']['score']:.2f} (n=2)" in captured.err
    # A fixed-size model is refused on the two-image query, by row, before any embedding.
    fake.preprocessor = types.SimpleNamespace(image=ImageConfig())
    assert eval_main(["--ckpt", str(tmp_path), "--data", str(out)]) == 2
    assert "eval.jsonl:4: query has 2 images;" in capsys.readouterr().err
