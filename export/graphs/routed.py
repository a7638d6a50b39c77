"""The routed graph: one ONNX graph that runs the full graph or the text-only graph per call.

Two ONNX Runtime sessions (full graph + text graph) each pre-pack their own copy of the
language model's weights; sharing one mapped copy between them (``SessionOptions.add_initializer``)
means turning pre-packing off, and ``MatMulNBits`` (int4) then runs its unpacked kernel, several
times slower. ORT's Python API has no cross-session pre-packed weights container. One session
has no such conflict: this graph is

    has_image = Cast<bool>(ReduceMax(image_mask))
    embedding = If(has_image, then=<the full graph>, else=<the text graph>)

with every weight an initializer of the outer graph, which both branches read. ORT pre-packs
an outer-scope initializer once per session and both branches' kernels use that copy (measured:
the same RSS as the full graph alone), so each precision keeps one copy of its weights, packed.

Structure only: the initializers keep their external-data references (the full graph's
``.data``, and the text graph's own small one), so the file is a few hundred kB. The text
graph's tensors that are the full graph's (the same bytes: ``lame_export.graphs.shared_weights``
points them there) become references to the full graph's initializer of that name; all other
names of each branch get a prefix, so the two never collide with each other or the outer scope.
The graph takes the full graph's inputs; a call with no image row skips the vision tower
(the text branch ignores ``pixel_values``, which may then have batch 0).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

ROUTED_FILES = {
    "fp32": "model_routed.onnx",
    "fp16": "model_routed_fp16.onnx",
    "int8": "model_routed_int8.onnx",
    "int4": "model_routed_int4.onnx",
}
CONDITION = "lame_routed/has_image"


def _key(tensor) -> tuple | None:
    """What makes two initializers the same tensor: the bytes they point at (external data) or
    hold (raw_data); None for the typed-field kind, which is left unshared."""
    from onnx import TensorProto

    if tensor.data_location == TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        return (
            "ext",
            tensor.data_type,
            tuple(tensor.dims),
            entries.get("location"),
            entries.get("offset", "0"),
            entries.get("length"),
        )
    if tensor.raw_data:
        return ("raw", tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest())
    return None


def _copy(tensor):
    from onnx import TensorProto

    out = TensorProto()
    out.CopyFrom(tensor)
    return out


def _copy_value(value):
    from onnx import ValueInfoProto

    out = ValueInfoProto()
    out.CopyFrom(value)
    return out


def _rename_graph(graph, rename: Callable[[str], str]) -> None:
    """Apply ``rename`` to every value and node name of ``graph`` and its subgraphs, in place."""
    from onnx import AttributeProto

    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename(value.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.input[:] = [rename(n) if n else n for n in node.input]
        node.output[:] = [rename(n) if n else n for n in node.output]
        if node.name:
            node.name = rename(node.name)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                _rename_graph(attribute.g, rename)
            elif attribute.type == AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _rename_graph(sub, rename)


def _sort_nodes(graph) -> None:
    """Topological order (ORT requires it inside a subgraph; the fp16 converter appends its
    casts after their consumers, which a top-level graph tolerates)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order: list[int] = []
    state = [0] * len(graph.node)  # 0 new, 1 on the stack, 2 placed
    for root in range(len(graph.node)):
        stack = [(root, iter(graph.node[root].input))]
        if state[root]:
            continue
        state[root] = 1
        while stack:
            index, pending = stack[-1]
            for name in pending:
                before = producer.get(name)
                if before is not None and state[before] == 0:
                    state[before] = 1
                    stack.append((before, iter(graph.node[before].input)))
                    break
                if before is not None and state[before] == 1:
                    raise ValueError(f"the graph has a cycle through {name!r}")
            else:
                stack.pop()
                state[index] = 2
                order.append(index)
    nodes = [graph.node[i] for i in order]
    sorted_nodes = [type(nodes[0])() for _ in nodes] if nodes else []
    for out, node in zip(sorted_nodes, nodes):
        out.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(sorted_nodes)


def _branch(proto, prefix: str, outer: dict[str, str], name: str):
    """``proto``'s graph as an If branch: no inputs, initializers moved out (returned), every
    name prefixed but those in ``outer`` (input -> outer name)."""
    graph = proto.graph
    _rename_graph(graph, lambda n: outer.get(n, prefix + n))
    kept = set(outer.values())
    moved = [_copy(t) for t in graph.initializer if t.name not in kept]
    del graph.initializer[:]
    del graph.input[:]
    graph.name = name
    del graph.value_info[:]  # stale after the converters (fp16 left fp32 types); ORT infers them
    _sort_nodes(graph)
    return graph, moved


def build_routed_graph(full: Path, text: Path, dst: Path) -> dict:
    """Write ``dst`` (beside ``full`` and ``text``, whose external data it refers to) ->
    ``{"shared_tensors", "own_tensors"}``: how many of the text graph's initializers became
    references to the full graph's, and how many it brings of its own."""
    import onnx
    from onnx import TensorProto, helper

    full, text, dst = Path(full), Path(text), Path(dst)
    if not (full.parent == text.parent == dst.parent):
        raise ValueError("the routed graph must sit beside the graphs whose data it refers to")
    full_proto = onnx.load(str(full), load_external_data=False)
    text_proto = onnx.load(str(text), load_external_data=False)
    if full_proto.functions or text_proto.functions:
        raise ValueError("graphs with model-local functions are not merged (the exporter inlines them)")
    full_inits = {t.name for t in full_proto.graph.initializer}
    inputs = [v for v in full_proto.graph.input if v.name not in full_inits]
    input_names = {v.name for v in inputs}
    by_key: dict[tuple, str] = {}
    for tensor in full_proto.graph.initializer:
        key = _key(tensor)
        if key is not None:
            by_key.setdefault(key, tensor.name)
    # Outer names: the graph inputs, the full graph's initializers, and the text graph's
    # initializers that are one of them.
    full_outer = {n: n for n in input_names | full_inits}
    text_inits = {t.name for t in text_proto.graph.initializer}
    text_outer = {v.name: v.name for v in text_proto.graph.input if v.name not in text_inits}
    missing = set(text_outer) - input_names
    if missing:
        raise ValueError(f"the text graph takes inputs the full graph lacks: {sorted(missing)}")
    shared = 0
    for tensor in text_proto.graph.initializer:
        key = _key(tensor)
        match = by_key.get(key) if key is not None else None
        if match is not None:
            text_outer[tensor.name] = match
            shared += 1
    outputs = [o.name for o in full_proto.graph.output]
    output_infos = [_copy_value(o) for o in full_proto.graph.output]
    if [o.name for o in text_proto.graph.output] != outputs:
        raise ValueError("the full and the text graph must have the same outputs")
    full_graph = full_proto.graph
    full_moved = [_copy(t) for t in full_graph.initializer]
    _rename_graph(full_graph, lambda n: full_outer.get(n, "full/" + n))
    del full_graph.initializer[:]
    del full_graph.input[:]
    full_graph.name = "full"
    del full_graph.value_info[:]
    _sort_nodes(full_graph)
    text_graph, text_moved = _branch(text_proto, "text/", text_outer, "text")
    nodes = [
        helper.make_node(
            "ReduceMax", ["image_mask"], ["lame_routed/any_image"], keepdims=0, name="lame_routed/any"
        ),
        helper.make_node(
            "Cast", ["lame_routed/any_image"], [CONDITION], to=TensorProto.BOOL, name="lame_routed/cast"
        ),
        helper.make_node(
            "If",
            [CONDITION],
            outputs,
            then_branch=full_graph,
            else_branch=text_graph,
            name="lame_routed/route",
        ),
    ]
    if "image_mask" not in input_names:
        raise ValueError("the full graph has no image_mask input to route on")
    graph = helper.make_graph(
        nodes,
        "lame_routed",
        inputs,
        output_infos,
        full_moved + text_moved,
    )
    opsets = {o.domain: o.version for o in full_proto.opset_import}
    for o in text_proto.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())],
        producer_name="lame_export.graphs.routed",
    )
    model.ir_version = max(full_proto.ir_version, text_proto.ir_version)
    onnx.save(model, str(dst))
    return {"shared_tensors": shared, "own_tensors": len(text_moved)}


def add_routed_graphs(folder: str | Path) -> dict[str, dict]:
    """Build the routed graph of every precision of an existing artifact that has a text graph
    with external data and no routed graph yet, and record it in the manifest (hashed, like
    every graph file). -> ``{precision: build_routed_graph's report}``."""
    from lame_runtime.artifact.contract import MANIFEST, sha256
    from lame_runtime.artifact.files import external_data_locations
    from lame_runtime.artifact.manifest import validate_manifest
    from lame_runtime.persist import atomic_write_json, read_json

    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    done = {}
    for precision, entry in manifest["models"].items():
        text = entry.get("text")
        if not text or "routed" in entry or not entry["external_data"] or precision not in ROUTED_FILES:
            continue
        name = ROUTED_FILES[precision]
        done[precision] = build_routed_graph(folder / entry["path"], folder / text["path"], folder / name)
        entry["routed"] = {"path": name, "external_data": external_data_locations(folder / name)}
        manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
    if done:
        validate_manifest(manifest)
        atomic_write_json(folder / MANIFEST, manifest)
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m lame_export.graphs.routed ART``: add routed graphs to an exported artifact."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("artifact", type=Path)
    args = parser.parse_args(argv)
    done = add_routed_graphs(args.artifact)
    for precision, report in done.items():
        print(f"{precision}: {ROUTED_FILES[precision]} ({report['shared_tensors']} text tensors shared)")
    if not done:
        print("nothing to add (no text graph with external data without a routed graph)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
