"""lame-search: build a cosine index of images or dataset items with an export artifact, query it.

Torch-free like the rest of ``lame_runtime`` (and it must not import ``lame`` either); it runs
through the same wrapper as every LaME CLI (:mod:`lame_runtime.cli.tools`): library errors
become one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import click

from lame_runtime.artifact.contract import PRECISIONS, ArtifactError
from lame_runtime.cli.corpus import embed_corpus_command, index_shards_command
from lame_runtime.cli.info import info_command
from lame_runtime.cli.tensorrt import build_engine_command, embedder_options, gpu_options, triton_command
from lame_runtime.cli.tools import invoke, version_option
from lame_runtime.errors import BackendError, InputError, MissingFileError
from lame_runtime.inputs.instructions import Spelling, modality
from lame_runtime.inputs.instructions import pick as pick_instruction
from lame_runtime.persist import parse_json
from lame_runtime.retrieval.index_io import STORAGES, index_exists
from lame_runtime.retrieval.indexing import BUILD_KEY, image_items
from lame_runtime.retrieval.visual_items import dataset_path

PROG = "lame-search"
FLAGS = Spelling(instruction="--instruction TEXT", empty="''", task="--task NAME")  # in errors
ANN_KINDS = ("flat", "hnsw")  # lame_runtime.retrieval.ann.KINDS (not imported: faiss stays optional)
EVAL_FILE = "eval.jsonl"
USER_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    ArtifactError,
    BackendError,
)


# --------------------------------------------------------------------------- items to index
def dataset_items(root: Path) -> list[tuple[str, dict[str, Any], str | None, Any]]:
    """Distinct candidates of ``root/eval.jsonl`` in first-seen order: (id, payload, text, image).

    An id is the image path relative to the dataset, the text, or ``"<path> :: <text>"``. A
    candidate may also give ``"image"`` as a list of paths and a ``"video"`` (a video file or a
    folder of frames), for a native-resolution model: its image is then
    ``{"image": [...], "video": ...}`` (``lame_runtime.retrieval.visual_items``) and its id
    joins every path and the text.
    """
    items: dict[str, tuple[str, dict[str, Any], str | None, Any]] = {}
    for where, candidate in _eval_candidates(root):
        text, image, video = candidate.get("text"), candidate.get("image"), candidate.get("video")
        many = isinstance(image, list)
        images: list[Any] = image if isinstance(image, list) else [image] if image is not None else []
        if (
            (text is not None and not isinstance(text, str))
            or not all(isinstance(path, str) and path for path in images)
            or (many and not images)
            or (video is not None and not (isinstance(video, str) and video))
            or not (text or images or video)
        ):
            raise InputError(
                f"{where}: a candidate needs a string 'text', 'image' (a path or a list of paths) "
                "and/or 'video' (a path)"
            )
        payload: dict[str, Any] = {}
        paths = [dataset_path(root, path, where, "image file") for path in images]
        if paths:
            payload["paths" if many else "path"] = (
                [str(p.resolve()) for p in paths] if many else str(paths[0].resolve())
            )
        clip = dataset_path(root, video, where, "video") if video else None
        if clip is not None:
            payload["video"] = str(clip.resolve())
        if text:
            payload["text"] = text
        item_id = " :: ".join(part for part in (*images, video, text) if part)
        visual: Any = str(root / images[0]) if images and not many and clip is None else None
        if many or clip is not None:
            visual = {"image": [str(root / path) for path in images], "video": str(clip) if clip else None}
        items.setdefault(item_id, (item_id, payload, text or None, visual))
    if not items:
        raise InputError(f"{root / EVAL_FILE} has no candidates")
    return list(items.values())


def _eval_candidates(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    path = root / EVAL_FILE
    if not root.is_dir():
        raise MissingFileError(f"dataset directory not found: {root}")
    if not path.is_file():
        raise MissingFileError(f"{root} has no {EVAL_FILE}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{EVAL_FILE}:{number}"
            row = parse_json(line, where, InputError)
            candidates = row.get("candidates") if isinstance(row, dict) else None
            if not isinstance(candidates, list):
                raise InputError(f"{where}: 'candidates' must be a list")
            for candidate in candidates:
                if not isinstance(candidate, dict):
                    raise InputError(f"{where}: each candidate must be an object")
                yield where, candidate


# --------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option(PROG)
def command() -> None:
    """Cosine search over LaME embeddings served from an export artifact (no torch).

    Errors print one line; add --debug (or set LAME_DEBUG=1) for the traceback.
    """


@command.command("index")
@click.option("--model", "model", required=True, help="Export artifact directory (lame-export).")
@click.option(
    "--images", "images_dir", default=None, help="Index every png/jpg/jpeg/bmp image under this directory."
)
@click.option(
    "--pattern",
    default="*",
    show_default=True,
    help="With --images: only files whose name matches this glob (e.g. 'eval_*').",
)
@click.option(
    "--data", "data_dir", default=None, help="Index every distinct candidate in this dataset's eval.jsonl."
)
@click.option(
    "--out",
    "out",
    default=None,
    help="Index path: a directory, or a prefix for <prefix>.npz + <prefix>.json.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--storage",
    type=click.Choice(STORAGES),
    default="float32",
    show_default=True,
    help="How the index stores vectors.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing index at --out.")
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted build of --out from its last checkpoint."
)
@click.option(
    "--skip-bad", is_flag=True, help="Skip unreadable/invalid items and list them in <index>.skipped.jsonl."
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Save the partial index every N items (for --resume); the interval also "
    "grows to 10 percent of the items done, since each save rewrites the index.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--ann",
    type=click.Choice(ANN_KINDS),
    default=None,
    help="Build a FAISS index (lame_runtime.retrieval.ann) instead of the exact one: 'flat' "
    "(exhaustive; --storage float16/int8 = scalar quantizer) or 'hnsw' "
    "(approximate graph).",
)
@click.option(
    "--hnsw-m",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="With --ann hnsw: graph degree.",
)
@click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="With --ann hnsw: default query beam (recall vs speed).",
)
@click.option(
    "--qdrant",
    "qdrant",
    default=None,
    help="Write to a Qdrant collection instead: a folder (embedded local mode, no "
    "server) or an http(s):// URL. Needs `pip install lame-embed[qdrant]`.",
)
@click.option("--collection", default="lame", show_default=True, help="With --qdrant: the collection name.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Image decode threads (default: one per core).",
)
@click.option(
    "--dimensions",
    type=click.IntRange(min=1),
    default=None,
    help="Store this Matryoshka size (one of the manifest's matryoshka_dims): "
    "smaller index, queries are cut to it. Default: the full embedding.",
)
@gpu_options
def index_command(
    model: Any,
    images_dir: Any,
    pattern: Any,
    data_dir: Any,
    out: Any,
    precision: Any,
    storage: Any,
    batch_size: Any,
    force: Any,
    resume: Any,
    skip_bad: Any,
    checkpoint_every: Any,
    progress: Any,
    ann: Any,
    hnsw_m: Any,
    ef_search: Any,
    qdrant: Any,
    collection: Any,
    workers: Any,
    dimensions: Any,
    **gpu: Any,
) -> int:
    """Embed documents (images or dataset candidates) and save a searchable index."""
    from lame_runtime.embedder import Embedder
    from lame_runtime.inputs.pipeline import PipelineOptions
    from lame_runtime.retrieval.indexing import BuildOptions, build_index, build_qdrant

    if (images_dir is None) == (data_dir is None):
        raise InputError("give exactly one of --images DIR or --data DIR")
    if force and resume:
        raise InputError("give at most one of --force and --resume")
    if (out is None) == (qdrant is None):
        raise InputError(
            "give exactly one of --out PATH (a local index) or --qdrant PATH_OR_URL (a Qdrant collection)"
        )
    if qdrant is not None and (resume or ann):
        raise InputError(
            "--qdrant cannot be combined with --resume or --ann (Qdrant upserts "
            "are idempotent: run the same command again to finish a build)"
        )
    existing = index_exists(out) if out is not None else None
    if existing and not (force or resume):
        raise FileExistsError(
            f"{existing} exists; pass --force to overwrite it or --resume to continue building it"
        )
    embedder = Embedder(
        model, precision=precision, **embedder_options(**gpu, pipeline=PipelineOptions(workers=workers))
    )
    items = image_items(Path(images_dir), pattern) if images_dir else dataset_items(Path(data_dir))
    source = (
        {"kind": "images", "source": str(Path(images_dir).resolve()), "pattern": pattern}
        if images_dir
        else {"kind": "data", "source": str(Path(data_dir).resolve()), "pattern": None}
    )
    ann_config = None
    if ann is not None:
        from lame_runtime.retrieval.ann import AnnConfig

        ann_config = AnnConfig(kind=ann, storage=storage, hnsw_m=hnsw_m, ef_search=ef_search)
    options = BuildOptions(
        storage=storage,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        skip_bad=skip_bad,
        resume=resume,
        force=force,
        ann=ann_config,
        dimensions=dimensions,
    )
    size = embedder.check_dimensions(dimensions)  # an unsupported size: one line, no work
    with _progress(progress, len(items), "embedding") as bar:
        if qdrant is not None:
            from lame_runtime.retrieval.qdrant_store import QdrantStore

            with QdrantStore(qdrant, collection, dim=size) as store:
                summary = build_qdrant(embedder, items, store, options, bar.update)
        else:
            summary = build_index(embedder, items, out, source, options, bar.update)
    click.echo(json.dumps(summary))
    return 0


@command.command("query")
@click.argument("text", required=False)
@click.option("--model", "model", required=True, help="Export artifact directory (lame-export).")
@click.option(
    "--index", "index_path", default=None, help="Index written by `lame-search index --out` (exact or --ann)."
)
@click.option(
    "--qdrant",
    "qdrant",
    default=None,
    help="Query a Qdrant collection instead: folder (local mode) or http(s):// URL.",
)
@click.option("--collection", default="lame", show_default=True, help="With --qdrant: the collection name.")
@click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    default=None,
    help="For an HNSW index: query beam (default: the one it was built with).",
)
@click.option("--image", "image", default=None, help="Query image (alone or with TEXT).")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--instruction",
    default=None,
    help="Query instruction; default: the one trained for the query's modality "
    "(text->image, image->text, ...), or, on an image index, for finding images when no "
    "direction starts from it (text+image queries on the digits model). Pass '' for none.",
)
@click.option(
    "--task", default=None, help="Use the instruction of this training task (see the artifact's manifest)."
)
@click.option(
    "--image-to-image",
    "image_to_image",
    is_flag=True,
    help="Find images like --image: embed it exactly as the indexed images were "
    "(the document instruction), so an indexed image finds itself first.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@gpu_options
def query_command(
    text: Any,
    model: Any,
    index_path: Any,
    qdrant: Any,
    collection: Any,
    ef_search: Any,
    image: Any,
    k: Any,
    instruction: Any,
    task: Any,
    image_to_image: Any,
    precision: Any,
    as_json: Any,
    **gpu: Any,
) -> int:
    """Embed TEXT and/or --image as a query and print the top-k documents."""
    from lame_runtime.embedder import Embedder

    if not text and image is None:
        raise InputError("give a query TEXT, --image PATH, or both")
    if image is not None and Path(image).is_dir():
        raise InputError(f"--image {image} is a directory, not an image file")
    if image is not None and not Path(image).is_file():
        raise MissingFileError(f"image file not found: {image}")
    if (index_path is None) == (qdrant is None):
        raise InputError("give exactly one of --index PATH or --qdrant PATH_OR_URL")
    if image_to_image and (image is None or text or instruction is not None or task):
        raise InputError(
            "--image-to-image takes --image alone (no TEXT, --instruction or "
            "--task): the image is embedded as the indexed documents were"
        )
    if qdrant is not None:
        from lame_runtime.retrieval.qdrant_store import QdrantStore, is_url

        if not is_url(qdrant) and not Path(qdrant).is_dir():
            raise MissingFileError(
                f"Qdrant folder not found: {qdrant} (build it with `lame-search index --qdrant`)"
            )
        index = QdrantStore(qdrant, collection)
    else:
        from lame_runtime.retrieval.ann import load_any

        index = load_any(index_path)
    embedder = Embedder(model, precision=precision, **embedder_options(**gpu))
    if index.dim not in embedder.dimensions:
        raise InputError(
            f"the model embeds in {embedder.dim} dims (serves "
            f"{list(embedder.dimensions)}) but the index holds {index.dim}-dim "
            "vectors: it was built with another model"
        )
    if image_to_image:  # the same embedding the index holds for an indexed image
        instruction = embedder.artifact.instruction("document") or ""
    used = instruction
    if instruction is None:
        # Picked here rather than inside encode_queries: the CLI knows what the index holds
        # (its target modality), and its error must name the flags, not Python keywords.
        used = pick_instruction(
            embedder.artifact.instructions,
            modality(text or None, image),
            task,
            target=documents_modality(index),
            spelling=FLAGS,
        )
        instruction = used or ""  # "" = no instruction; None would make encode_queries pick again
    vector = embedder.encode_queries(
        texts=[text or None], images=[image], instruction=instruction, dimensions=index.dim
    )  # a Matryoshka index's size
    from lame_runtime.retrieval.ann import AnnIndex  # faiss itself loads only with an index

    if ef_search is not None and isinstance(index, AnnIndex):
        scores, ids = index.search(vector, k, ef_search=ef_search)
    else:
        scores, ids = index.search(vector, k)
    results = [
        {"rank": rank, "score": float(score), "id": item_id, "payload": index.payload(item_id)}
        for rank, (score, item_id) in enumerate(zip(scores[0], ids[0]), 1)
    ]
    if hasattr(index, "close"):
        index.close()
    if as_json:
        click.echo(
            json.dumps(
                {"query": {"text": text, "image": image, "instruction": used}, "results": results},
                ensure_ascii=False,
            )
        )
    else:
        click.echo(format_table(results))
    return 0


def documents_modality(index: Any) -> str | None:
    """The modality of the indexed documents where the index's build record says: an index of
    an image folder holds images; a dataset's may mix texts and images (None: not known)."""
    build = (getattr(index, "info", None) or {}).get(BUILD_KEY) or {}
    return "image" if build.get("kind") == "images" else None


def format_table(results: list[dict[str, Any]]) -> str:
    """rank, score, id, and the payload when it says more than the id."""
    rows = [("rank", "score", "id", "payload")]
    for r in results:
        payload = r["payload"]
        redundant = payload is None or payload == {"text": r["id"]}
        extra = "" if redundant else _short(json.dumps(payload, ensure_ascii=False))
        rows.append((str(r["rank"]), f"{r['score']:.4f}", r["id"], extra))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{a:>{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows
    )


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _progress(enabled: bool, length: int, label: str) -> Any:
    # tqdm (items/s and ETA) on stderr, so stdout stays JSON.
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=length, desc=label, unit="item", file=sys.stderr, smoothing=0.1)


class _NoBar:
    """Stand-in for click.progressbar(hidden=True), which needs click >= 8.2."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, steps: int) -> None:
        return None


command.add_command(build_engine_command)
command.add_command(triton_command)
command.add_command(info_command)
command.add_command(embed_corpus_command)
command.add_command(index_shards_command)


# --------------------------------------------------------------------------- entry points
def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, PROG, USER_ERRORS)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
