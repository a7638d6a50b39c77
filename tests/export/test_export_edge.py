"""Edge memory: file modes, one copy of the weights for both graphs, int4 weight-only.

One real export of the trained tiny checkpoint (fp32 + fp16 + int8 + int4, external data forced,
parity and retrieval gates enforced), opened by the real runtime.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from lame_export.graphs.text import TEXT_FILES
from lame_export.pipeline import FILES, ExportOptions, export_checkpoint
from lame_export.precision import Int4Options
from lame_runtime import Embedder, RuntimeOptions
from lame_runtime.artifact.contract import MANIFEST, Artifact
from lame_runtime.engines.shared_weights import NUMPY_TYPES, external_tensors
from lame_runtime.errors import ArtifactError
from lame_runtime.persist import atomic_write_dir, default_file_mode

PRECISIONS = ("fp32", "fp16", "int8", "int4")
TEXTS = ["the digits add up to 9", "three", None]
IMAGES = [None, None, np.full((16, 64, 3), 200, dtype=np.uint8)]


@pytest.fixture(scope="module")
def edge_artifact(trained_ckpt, digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "art"
    report = export_checkpoint(
        trained_ckpt,
        out,
        ExportOptions(
            fp16=True,
            int8=True,
            int4=True,
            calib_data=str(digits_dir),
            calib_size=16,
            external_data_threshold=0,
            force=True,
        ),
    )
    # Parity gates must pass; the retrieval gate is recorded, not enforced: the 8-step model
    # scores 2.38 hit@1 on 42 queries, so one query (2.38 points) is past every limit.
    assert [f for f in report["failures"] if "hit@1" not in f] == []
    return out


def test_every_artifact_file_has_the_default_mode(edge_artifact):
    want = default_file_mode()
    assert want == 0o666 & ~_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in edge_artifact.iterdir() if p.is_file()}
    assert any(name.endswith("_fp16.onnx.data") for name in modes)  # onnx wrote these 0600
    assert {name: mode for name, mode in modes.items() if mode != want} == {}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_modes_follow_the_umask(tmp_path):
    """onnx writes external data 0600 whatever the umask; the artifact writer corrects it."""
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [weight],
    )

    def write(stage: Path) -> None:
        onnx.save(
            helper.make_model(graph),
            str(stage / "m.onnx"),
            save_as_external_data=True,
            location="m.onnx.data",
            size_threshold=0,
        )
        (stage / MANIFEST).write_text("{}")

    old = os.umask(0o027)
    try:
        atomic_write_dir(tmp_path / "out", write, marker=MANIFEST)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {"m.onnx": 0o640, "m.onnx.data": 0o640, MANIFEST: 0o640}


def test_text_graph_weights_live_in_the_full_graph_data(edge_artifact):
    manifest = json.loads((edge_artifact / MANIFEST).read_text())
    report = json.loads((edge_artifact / "parity.json").read_text())
    for precision in PRECISIONS:
        full, text = manifest["models"][precision], manifest["models"][precision]["text"]
        data = f"{FILES[precision]}.data"
        assert full["external_data"] == [data]
        assert data in text["external_data"], precision  # listed, so its hash is checked
        shared = report["shared_weights"][precision]
        assert shared["shared_bytes"] > 0 and shared["shared_bytes"] > 10 * shared["own_bytes"]
        locations = {t.location for t in external_tensors(edge_artifact / TEXT_FILES[precision])}
        assert data in locations
        # the text graph still matches PyTorch with its weights read from the full graph's file
        assert report["text_graph"][precision]["passed"], precision
    assert not (edge_artifact / "model_text.onnx.data").exists()  # nothing of its own left


def test_runtime_reader_agrees_with_onnx(edge_artifact):
    for name in (FILES["int8"], TEXT_FILES["int8"], TEXT_FILES["int4"]):
        proto = onnx.load(str(edge_artifact / name), load_external_data=False)
        want = {
            t.name: (t.data_type, tuple(t.dims), {e.key: e.value for e in t.external_data}["location"])
            for t in proto.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
        }
        got = {t.name: (t.data_type, t.dims, t.location) for t in external_tensors(edge_artifact / name)}
        assert got == want and got


def test_tampered_shared_data_is_refused_for_the_text_graph(edge_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(edge_artifact, copy)
    data = copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"model\.onnx\.data does not match the sha256"):
        Artifact.open(copy).file_for("fp32", graph="text")


def _without_routed(edge_artifact: Path, tmp_path: Path) -> Path:
    """A copy of the artifact without routed graphs (as older exports)."""
    copy = tmp_path / "no_routed"
    shutil.copytree(edge_artifact, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for entry in manifest["models"].values():
        name = entry.pop("routed")["path"]
        del manifest["files"][name]
        (copy / name).unlink()
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("precision", PRECISIONS)
def test_one_session_serves_both_routes(edge_artifact, precision):
    """The default Embedder opens the routed graph only: text rows take its text branch, image
    rows its full branch, with the same vectors as two separate sessions."""
    routed = Embedder(edge_artifact, precision=precision)
    assert routed.uses_routed_graph and routed.shares_weights and routed._text_backend is None
    ops = [n.op_type for n in onnx.load(str(routed.artifact.file_for(precision, graph="routed"))).graph.node]
    assert ops == ["ReduceMax", "Cast", "If"]
    separate = Embedder(edge_artifact, precision=precision, options=RuntimeOptions(share_weights=False))
    assert not separate.uses_routed_graph and separate._text_backend is not None
    np.testing.assert_allclose(routed.encode(TEXTS, IMAGES), separate.encode(TEXTS, IMAGES), atol=1e-5)
    # text-only and image-only batches too (each call takes one branch)
    np.testing.assert_allclose(routed.encode(TEXTS[:2]), separate.encode(TEXTS[:2]), atol=1e-5)
    np.testing.assert_allclose(
        routed.encode([None], IMAGES[2:]), separate.encode([None], IMAGES[2:]), atol=1e-5
    )


def test_routed_graph_refers_to_the_graphs_data_only(edge_artifact):
    manifest = json.loads((edge_artifact / MANIFEST).read_text())
    for precision in PRECISIONS:
        entry = manifest["models"][precision]
        assert set(entry["routed"]["external_data"]) == set(entry["external_data"]) | set(
            entry["text"]["external_data"]
        )
        # structure only: every weight stays in the data files it was written to
        assert (
            manifest["files"][entry["routed"]["path"]]["bytes"]
            < 2 * manifest["files"][entry["path"]]["bytes"]
        )


def test_routed_graph_is_added_to_an_older_export(edge_artifact, tmp_path):
    from lame_export.graphs.routed import ROUTED_FILES, add_routed_graphs

    copy = _without_routed(edge_artifact, tmp_path)
    assert not any((copy / name).exists() for name in ROUTED_FILES.values())
    assert not Embedder(copy, precision="int4").uses_routed_graph
    assert sorted(add_routed_graphs(copy)) == sorted(PRECISIONS)
    assert add_routed_graphs(copy) == {}  # already there: nothing to do
    embedder = Embedder(copy, precision="int4")
    assert embedder.uses_routed_graph
    want = Embedder(edge_artifact, precision="int4").encode(TEXTS, IMAGES)
    np.testing.assert_allclose(embedder.encode(TEXTS, IMAGES), want, atol=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_both_sessions_use_one_mapped_copy(edge_artifact, precision, tmp_path):
    """Without a routed graph (older exports) the two sessions share one mapping instead."""
    copy = _without_routed(edge_artifact, tmp_path)
    shared = Embedder(copy, precision=precision)
    assert shared.routes_text and shared.shares_weights and not shared.uses_routed_graph
    text_tensors = [
        t for t in external_tensors(copy / TEXT_FILES[precision]) if t.location == f"{FILES[precision]}.data"
    ]
    # Sub-byte tensors (int4's packed UINT4 embedding table) have no NumPy dtype to map them
    # as: ORT loads those itself; every other one is shared.
    mappable = [t for t in text_tensors if t.data_type in NUMPY_TYPES]
    assert shared._text_backend.shared_initializers == len(mappable) > 0
    full_tensors = external_tensors(copy / FILES[precision])
    # every text tensor is one of the full graph's (offset, length): no second buffer for it
    assert {(t.offset, t.length) for t in text_tensors} <= {(t.offset, t.length) for t in full_tensors}
    assert shared._shared.shared_bytes <= (copy / f"{FILES[precision]}.data").stat().st_size
    separate = Embedder(copy, precision=precision, options=RuntimeOptions(share_weights=False))
    assert not separate.shares_weights and separate._text_backend.shared_initializers == 0
    a, b = shared.encode(TEXTS, IMAGES), separate.encode(TEXTS, IMAGES)
    # Sharing changes memory, not results -- except int4: without pre-packing MatMulNBits runs
    # its unpacked kernel, which does not quantise activations to int8 as the pre-packed
    # accuracy-level-4 kernel does (measured: |diff| ~2.5e-4 on unit vectors).
    np.testing.assert_allclose(a, b, atol=1e-3 if precision == "int4" else 1e-5)


RSS_PROBE = """
import json, sys
import numpy as np
from lame_runtime import Embedder, RuntimeOptions
path, precision, mode = sys.argv[1:]
embedder = Embedder(path, precision=precision, options=RuntimeOptions(threads=1, route_text=mode != "full", share_weights=mode == "shared"))
embedder.encode(["one two"], None)
embedder.encode([None], [np.zeros((16, 64, 3), np.uint8)])
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({"hwm_kb": int(status["VmHWM"].split()[0])}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_routed_rss_is_printed_against_the_full_graph(edge_artifact):
    """Peak RSS in fresh processes (full graph only / routed, shared / routed, separate): printed,
    not asserted (the tiny model's weights are smaller than the interpreter's own noise; the
    probe figures are in the README)."""
    peaks = {}
    for mode in ("full", "shared", "separate"):
        out = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(edge_artifact), "fp32", mode],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[mode] = json.loads(out.stdout.splitlines()[-1])["hwm_kb"]
    print(
        f"\ntiny fp32 peak RSS: full {peaks['full']} kB; routed shared "
        f"{peaks['shared'] / peaks['full']:.3f}x, routed separate "
        f"{peaks['separate'] / peaks['full']:.3f}x"
    )
    assert all(v > 0 for v in peaks.values())


def test_int4_graph_is_weight_only_and_served(edge_artifact):
    report = json.loads((edge_artifact / "parity.json").read_text())
    assert report["int4"]["passed"] and report["int4"]["threshold"] == 0.98
    assert report["int4"]["min_cosine"] >= 0.98
    assert "int4" in report["retrieval"]["hit@1"]
    ops = {
        n.op_type for n in onnx.load(str(edge_artifact / FILES["int4"]), load_external_data=False).graph.node
    }
    assert "MatMulNBits" in ops and "QuantizeLinear" not in ops  # weights only, no activation Q
    assert "GatherBlockQuantized" in ops  # the embedding table too (the default)
    lint = report["tensorrt_lint_int4"]
    assert "com.microsoft::MatMulNBits" in lint["custom_domain_ops"] and not lint["ok"]
    assert "TensorRT" in lint["note"]
    int4 = Embedder(edge_artifact, precision="int4").encode(TEXTS, IMAGES)
    fp32 = Embedder(edge_artifact, precision="fp32").encode(TEXTS, IMAGES)
    assert np.isfinite(int4).all() and (np.sum(int4 * fp32, axis=1) > 0.98).all()
    sizes = {p: (edge_artifact / f"{FILES[p]}.data").stat().st_size for p in ("fp32", "int4")}
    assert sizes["int4"] < sizes["fp32"]


def test_int4_options_are_checked(trained_ckpt, tmp_path):
    with pytest.raises(ValueError, match="power of two"):
        export_checkpoint(trained_ckpt, tmp_path / "x", ExportOptions(int4=True, int4_block_size=24))
    with pytest.raises(ValueError, match="accuracy level"):
        Int4Options(accuracy_level=7).check()
    assert not (tmp_path / "x").exists()


def test_int4_block_size_and_embeddings_options(trained_ckpt, tmp_path):
    from lame_export.cli import main

    out = tmp_path / "art"
    assert (
        main(
            [
                "--ckpt",
                str(trained_ckpt),
                "--out",
                str(out),
                "--int4",
                "--int4-block-size",
                "64",
                "--no-int4-embeddings",
            ]
        )
        == 0
    )
    graph = onnx.load(str(out / FILES["int4"]), load_external_data=False).graph
    blocks = {
        a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"
    }
    assert blocks == {64}
    assert "GatherBlockQuantized" not in {n.op_type for n in graph.node}
    assert Artifact.open(out).precisions == ["fp32", "int4"]


def test_info_reports_the_memory_budget(edge_artifact, capsys):
    """`lame-search info ART --measure --json`: every precision, text weights counted once
    where they live in the full graph's .data, and a measured peak RSS from a fresh process."""
    from lame_runtime.cli.search import main

    assert main(["info", str(edge_artifact), "--measure", "--json"]) == 0
    rows = {r["precision"]: r for r in json.loads(capsys.readouterr().out)["precisions"]}
    assert set(rows) == {"fp32", "fp16", "int8", "int4"}
    for row in rows.values():
        assert row["text_weights_shared"], row
        # shared: what is mapped is the full graph plus the text graph's structure only
        assert (
            row["full_graph_bytes"]
            <= row["resident_weights_bytes"]
            < row["full_graph_bytes"] + row["text_graph_bytes"] + row["routed_graph_bytes"]
        ), row
        assert 0 < row["routed_graph_bytes"] < row["full_graph_bytes"] + row["text_graph_bytes"]
        measured = row["measured"]
        assert measured["routes_text"] and measured["routed_graph"] and measured["peak_rss_mb"] > 10
        # load, then the first vector; process start -> first vector includes both
        assert measured["open_s"] > 0 and measured["first_vector_s"] > 0
        assert measured["cold_start_s"] > measured["open_s"]
    assert rows["int4"]["full_graph_bytes"] < rows["fp32"]["full_graph_bytes"]
    assert main(["info", str(edge_artifact), "--measure"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "load s" in table[1] and "1st vector s" in table[1] and "cold start s" in table[1]
    assert len(table) == 2 + len(rows)


@pytest.mark.parametrize("options", [RuntimeOptions(), RuntimeOptions(share_weights=False)])
def test_fp16_on_the_cpu_warns_once(edge_artifact, options):
    """One warning per Embedder naming the CPU precisions, however many sessions it opens
    (two without the routed graph); fp32 gets none. fp16 still runs."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedder = Embedder(edge_artifact, precision="fp16", options=options)
        vectors = embedder.encode(TEXTS, IMAGES)
        Embedder(edge_artifact, precision="fp32", options=options).encode(TEXTS, IMAGES)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "int8 or int4" in messages[0] and "CPUExecutionProvider" in messages[0]
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_session_cache_reloads_the_optimized_graph(edge_artifact, tmp_path, precision):
    """The first start saves ORT's optimized graph with its pre-packed weights; the next loads
    it (same vectors); a saved file that no longer matches its sha256 is rebuilt, not used."""
    cache = tmp_path / "sessions"
    options = RuntimeOptions(session_cache=cache)
    want = Embedder(edge_artifact, precision=precision).encode(TEXTS, IMAGES)
    first = Embedder(edge_artifact, precision=precision, options=options)
    assert not first._backend.cached
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    saved = json.loads((entry / "entry.json").read_text())["files"]
    assert {"model.onnx", "model.onnx.data"} <= set(saved)
    second = Embedder(edge_artifact, precision=precision, options=options)
    assert second._backend.cached and second.uses_routed_graph
    np.testing.assert_allclose(second.encode(TEXTS, IMAGES), want, atol=1e-6)
    np.testing.assert_allclose(first.encode(TEXTS, IMAGES), want, atol=1e-6)
    del first, second
    data = entry / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    third = Embedder(edge_artifact, precision=precision, options=options)
    assert not third._backend.cached  # the tampered entry was dropped and saved again
    np.testing.assert_allclose(third.encode(TEXTS, IMAGES), want, atol=1e-6)
    assert Embedder(edge_artifact, precision=precision, options=options)._backend.cached


def test_prepacking_is_chosen_per_precision(edge_artifact):
    """int8 and int4 pre-pack (their kernels need it); fp32 does not unless asked (it costs most
    of the load time for a small gain); either way the vectors are the same."""

    def disabled(embedder) -> str:
        options = embedder._backend.session.get_session_options()
        try:
            return options.get_session_config_entry("session.disable_prepacking")
        except RuntimeError:  # never set
            return "0"

    assert [Embedder(edge_artifact, precision=p).prepacks for p in PRECISIONS] == [False, False, True, True]
    plain, packed = (
        Embedder(edge_artifact, precision="fp32", options=RuntimeOptions(prepack=choice))
        for choice in (None, True)
    )
    assert (plain.prepacks, packed.prepacks) == (False, True)
    assert (disabled(plain), disabled(packed)) == ("1", "0")
    assert disabled(Embedder(edge_artifact, precision="int4")) == "0"
    np.testing.assert_allclose(plain.encode(TEXTS, IMAGES), packed.encode(TEXTS, IMAGES), atol=1e-5)


def test_int4_block_size_follows_each_weights_width(tmp_path):
    """By default a weight whose quantised axis has 1024+ entries gets blocks of 128 (where
    the CPU kernel beats fp32), a narrower one 16; an explicit size applies to all."""
    from onnx import TensorProto, helper, numpy_helper

    from lame_export.precision import WIDE_BLOCK_SIZE, WIDE_FROM, to_int4

    rng = np.random.default_rng(0)
    weights = {
        "narrow": rng.standard_normal((64, 32)).astype(np.float32),
        "wide": rng.standard_normal((WIDE_FROM, 32)).astype(np.float32),
        "table": rng.standard_normal((10, WIDE_FROM)).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
            helper.make_node("MatMul", ["x", "narrow"], ["y1"], name="narrow_mm"),
            helper.make_node("MatMul", ["emb", "wide"], ["y2"], name="wide_mm"),
        ],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 32]) for n in ("y1", "y2")],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    src = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))

    def blocks(options: Int4Options) -> dict[str, int]:
        dst = to_int4(src, tmp_path / "q.onnx", options)
        nodes = onnx.load(str(dst)).graph.node
        return {
            node.op_type: next(a.i for a in node.attribute if a.name == "block_size")
            for node in nodes
            if node.op_type == "GatherBlockQuantized"
        } | {
            node.name: next(a.i for a in node.attribute if a.name == "block_size")
            for node in nodes
            if node.op_type == "MatMulNBits"
        }

    auto = blocks(Int4Options())
    assert sorted(auto.values()) == [16, WIDE_BLOCK_SIZE, WIDE_BLOCK_SIZE], auto
    assert auto["GatherBlockQuantized"] == WIDE_BLOCK_SIZE
    assert set(blocks(Int4Options(block_size=32)).values()) == {32}


def test_int4_falls_back_to_narrow_blocks_when_the_wide_ones_miss_the_gate(
    trained_ckpt, tmp_path, monkeypatch
):
    """Default int4: the fast wide blocks if they pass the parity gates, else blocks of 16
    (said in the report), never a failed export that the narrow blocks would have passed."""
    from lame_export import precision
    from lame_export.validate import THRESHOLDS

    monkeypatch.setattr(precision, "WIDE_FROM", 32)  # the tiny model's weights count as wide

    def export(name: str, **int4) -> dict:
        options = ExportOptions(int4=True, force=True, **int4)
        return export_checkpoint(trained_ckpt, tmp_path / name, options)

    wide, narrow = export("wide", int4_block_size=128), export("narrow", int4_block_size=16)
    low, high = wide["int4"]["min_cosine"], narrow["int4"]["min_cosine"]
    assert low < high  # wide blocks cost accuracy, which is why they are gated
    monkeypatch.setitem(THRESHOLDS, "int4", (low + high) / 2)
    report = export("auto")
    assert report["int4_blocks"] == [16] and "int4 parity" in report["int4_wide_blocks_missed"]
    assert not report["failures"]
    monkeypatch.setitem(THRESHOLDS, "int4", low - 1e-3)
    report = export("auto-wide")
    assert report["int4_blocks"] == [128] and "int4_wide_blocks_missed" not in report
