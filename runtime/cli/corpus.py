"""lame-search's corpus commands: ``embed-corpus`` (Ray Data) and ``index-shards``.

``embed-corpus`` embeds a source on a Ray cluster -- the one ``$RAY_ADDRESS`` names (``ray
start --head`` on one node, ``ray start --address HEAD:6379`` on the others), else a local one
it starts -- into Parquet shards, optionally upserted into a Qdrant collection. Rerunning the
same command resumes. ``index-shards`` turns finished shards into the exact or FAISS index
``lame-search query --index`` searches.
"""

from __future__ import annotations

import json
from typing import Any

import click

from lame_runtime.artifact.contract import PRECISIONS
from lame_runtime.retrieval.index_io import STORAGES, index_exists

ANN_KINDS = ("flat", "hnsw")


@click.command("embed-corpus")
@click.option(
    "--engine", type=click.Choice(["ray"]), default="ray", show_default=True, help="The distributed engine."
)
@click.option("--model", required=True, help="Export artifact directory (the same path on every node).")
@click.option(
    "--source",
    required=True,
    help="A folder of images, a .jsonl file, or .parquet file(s) with id and text and/or image columns "
    "(other columns are kept as metadata).",
)
@click.option("--out", required=True, help="Output folder of Parquet shards (shared by every node).")
@click.option(
    "--qdrant", default=None, help="Also upsert into a Qdrant collection: a folder (local mode) or URL."
)
@click.option("--collection", default="lame", show_default=True, help="With --qdrant: the collection name.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Model actors.")
@click.option(
    "--num-gpus", type=click.FloatRange(min=0), default=0, show_default=True, help="GPUs per actor."
)
@click.option(
    "--num-cpus",
    type=click.FloatRange(min=0),
    default=1,
    show_default=True,
    help="CPUs per actor (its ONNX Runtime threads, unless --threads).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads per actor.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per model call."
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Items per output file: the unit of resume.",
)
@click.option(
    "--role",
    type=click.Choice(["document", "query"]),
    default="document",
    show_default=True,
    help="Embed as documents (what an index holds) or as queries (their trained instructions).",
)
@click.option("--instruction", default=None, help="Override the instruction for every row ('' for none).")
@click.option("--task", default=None, help="With --role query: the training task's instruction.")
@click.option(
    "--dimensions", type=click.IntRange(min=1), default=None, help="A Matryoshka size of the model."
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True
)
@click.option("--pattern", default="*", show_default=True, help="For a folder of images: a filename glob.")
@click.option("--force", is_flag=True, help="Discard a different job's shards in --out and start over.")
@click.option(
    "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)."
)
def embed_corpus_command(model: str, source: str, out: str, engine: str, **flags: Any) -> int:
    """Embed a whole corpus on Ray Data into Parquet shards (resumable: rerun to finish)."""
    from lame_runtime.corpus.ray_job import CorpusOptions, embed_corpus

    summary = embed_corpus(model, source, out, CorpusOptions(**flags))
    click.echo(json.dumps(summary))
    return 0


@click.command("index-shards")
@click.option("--shards", required=True, help="An embed-corpus output folder.")
@click.option("--out", required=True, help="Index path, as for `lame-search index --out`.")
@click.option("--storage", type=click.Choice(STORAGES), default="float32", show_default=True)
@click.option("--ann", type=click.Choice(ANN_KINDS), default=None, help="Build a FAISS index instead.")
@click.option("--hnsw-m", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--ef-search", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing index at --out.")
def index_shards_command(
    shards: str, out: str, storage: str, ann: str | None, hnsw_m: int, ef_search: int, force: bool
) -> int:
    """Build an exact (or --ann FAISS) index from embed-corpus shards."""
    from lame_runtime.corpus.shards import build_index_from_shards

    config = None
    if ann is not None:
        from lame_runtime.retrieval.ann import AnnConfig

        config = AnnConfig(kind=ann, storage=storage, hnsw_m=hnsw_m, ef_search=ef_search)
    existing = index_exists(out)
    if existing and not force:
        raise FileExistsError(f"{existing} exists; pass --force to overwrite it")
    summary = build_index_from_shards(shards, out, storage=storage, ann=config)
    click.echo(json.dumps(summary))
    return 0


COMMANDS = (embed_corpus_command, index_shards_command)
