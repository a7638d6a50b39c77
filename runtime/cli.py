"""lame-search: build a cosine index of images or dataset items with an export artifact, query it.

Torch-free like the rest of ``lame_runtime`` (and it must not import ``lame`` either), so the
small ``invoke`` helper below mirrors ``lame.cli.invoke``: library errors become one line on
stderr and exit code 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import click

from lame_runtime.clitools import invoke
from lame_runtime.artifact import PRECISIONS, ArtifactError
from lame_runtime.index import STORAGES, Index, index_files

PROG = "lame-search"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
EVAL_FILE = "eval.jsonl"
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, ArtifactError)


# --------------------------------------------------------------------------- items to index
def image_items(root: Path, pattern: str = "*"
                ) -> list[tuple[str, dict[str, Any], str | None, str | None]]:
    """Every image under ``root`` matching ``pattern`` (recursive, sorted):
    (id, payload, text, image)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image directory not found: {root}")
    files = sorted((p for p in root.rglob(pattern)
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ValueError(f"no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images matching "
                         f"{pattern!r} in {root}")
    return [(p.relative_to(root).as_posix(), {"path": str(p.resolve())}, None, str(p))
            for p in files]


def dataset_items(root: Path) -> list[tuple[str, dict[str, Any], str | None, str | None]]:
    """Distinct candidates of ``root/eval.jsonl`` in first-seen order: (id, payload, text, image).

    An id is the image path relative to the dataset, the text, or ``"<path> :: <text>"``.
    """
    items: dict[str, tuple[str, dict[str, Any], str | None, str | None]] = {}
    for where, candidate in _eval_candidates(root):
        text, image = candidate.get("text"), candidate.get("image")
        if (text is not None and not isinstance(text, str)) or \
                (image is not None and not isinstance(image, str)) or not (text or image):
            raise ValueError(f"{where}: a candidate needs a string 'text' and/or 'image'")
        payload: dict[str, Any] = {}
        if image:
            path = root / image
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image file not found: {path}")
            payload["path"] = str(path.resolve())
        if text:
            payload["text"] = text
        item_id = " :: ".join(part for part in (image, text) if part)
        items.setdefault(item_id, (item_id, payload, text or None, str(root / image)
                                   if image else None))
    if not items:
        raise ValueError(f"{root / EVAL_FILE} has no candidates")
    return list(items.values())


def _eval_candidates(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    path = root / EVAL_FILE
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {root}")
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {EVAL_FILE}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{EVAL_FILE}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON: {err}") from err
            candidates = row.get("candidates") if isinstance(row, dict) else None
            if not isinstance(candidates, list):
                raise ValueError(f"{where}: 'candidates' must be a list")
            for candidate in candidates:
                if not isinstance(candidate, dict):
                    raise ValueError(f"{where}: each candidate must be an object")
                yield where, candidate


# --------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def command() -> None:
    """Cosine search over LaME embeddings served from an export artifact (no torch)."""


@command.command("index")
@click.option("--model", "model", required=True, help="Export artifact directory (lame-export).")
@click.option("--images", "images_dir", default=None,
              help="Index every png/jpg/jpeg/bmp image under this directory.")
@click.option("--pattern", default="*", show_default=True,
              help="With --images: only files whose name matches this glob (e.g. 'eval_*').")
@click.option("--data", "data_dir", default=None,
              help="Index every distinct candidate in this dataset's eval.jsonl.")
@click.option("--out", "out", required=True,
              help="Index path: a directory, or a prefix for <prefix>.npz + <prefix>.json.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--storage", type=click.Choice(STORAGES), default="float32", show_default=True,
              help="How the index stores vectors.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing index at --out.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def index_command(model, images_dir, pattern, data_dir, out, precision, storage, batch_size,
                  force, progress) -> int:
    """Embed documents (images or dataset candidates) and save a searchable index."""
    from lame_runtime.embedder import Embedder

    if (images_dir is None) == (data_dir is None):
        raise ValueError("give exactly one of --images DIR or --data DIR")
    existing = [p for p in index_files(out) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to overwrite it")
    embedder = Embedder(model, precision=precision)
    items = (image_items(Path(images_dir), pattern) if images_dir
             else dataset_items(Path(data_dir)))
    index = Index(embedder.dim, storage=storage)
    with _progress(progress, len(items), "embedding") as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            vectors = embedder.encode_documents(texts=[i[2] for i in chunk],
                                                images=[i[3] for i in chunk],
                                                batch_size=batch_size)
            index.add(vectors, [i[0] for i in chunk], [i[1] for i in chunk])
            bar.update(len(chunk))
    npz_path, json_path = index.save(out)
    click.echo(json.dumps({"index": str(json_path.with_suffix("")), "count": len(index),
                           "dim": index.dim, "storage": storage, "precision": precision,
                           "files": [str(npz_path), str(json_path)]}))
    return 0


@command.command("query")
@click.argument("text", required=False)
@click.option("--model", "model", required=True, help="Export artifact directory (lame-export).")
@click.option("--index", "index_path", required=True, help="Index written by `lame-search index`.")
@click.option("--image", "image", default=None, help="Query image (alone or with TEXT).")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--instruction", default=None,
              help="Query instruction; default: the artifact's. Pass '' for none.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def query_command(text, model, index_path, image, k, instruction, precision, as_json) -> int:
    """Embed TEXT and/or --image as a query and print the top-k documents."""
    from lame_runtime.embedder import Embedder

    if not text and image is None:
        raise ValueError("give a query TEXT, --image PATH, or both")
    if image is not None and not Path(image).is_file():
        raise FileNotFoundError(f"image file not found: {image}")
    index = Index.load(index_path)
    embedder = Embedder(model, precision=precision)
    if embedder.dim != index.dim:
        raise ValueError(f"the model embeds in {embedder.dim} dims but the index holds "
                         f"{index.dim}-dim vectors: it was built with another model")
    vector = embedder.encode_queries(texts=[text or None], images=[image],
                                     instruction=instruction)
    scores, ids = index.search(vector, k)
    results = [{"rank": rank, "score": float(score), "id": item_id,
                "payload": index.payload(item_id)}
               for rank, (score, item_id) in enumerate(zip(scores[0], ids[0]), 1)]
    if as_json:
        used = instruction if instruction is not None else embedder.artifact.instruction("query")
        click.echo(json.dumps({"query": {"text": text, "image": image, "instruction": used},
                               "results": results}, ensure_ascii=False))
    else:
        click.echo(format_table(results))
    return 0


def format_table(results: list[dict[str, Any]]) -> str:
    """rank, score, id, and the payload when it says more than the id."""
    rows = [("rank", "score", "id", "payload")]
    for r in results:
        payload = r["payload"]
        redundant = payload is None or payload == {"text": r["id"]}
        extra = "" if redundant else _short(json.dumps(payload, ensure_ascii=False))
        rows.append((str(r["rank"]), f"{r['score']:.4f}", r["id"], extra))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:>{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()
                     for a, b, c, d in rows)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _progress(enabled: bool, length: int, label: str):
    # tqdm is not a base dependency; click's bar is enough, on stderr so stdout stays JSON.
    if not enabled:
        return _NoBar()
    return click.progressbar(length=length, label=label, file=sys.stderr)


class _NoBar:
    """Stand-in for click.progressbar(hidden=True), which needs click >= 8.2."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, steps: int) -> None:
        return None


# --------------------------------------------------------------------------- entry points
def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, PROG, USER_ERRORS)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
