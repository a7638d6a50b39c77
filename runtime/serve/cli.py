"""``lame-serve``: the embedding and search service on uvicorn (``main(argv)`` for tests).

SIGTERM / Ctrl-C: uvicorn stops accepting connections and waits for the requests in flight
(at most ``--request-timeout`` + 5 s); then the app's shutdown finishes queued rows and saves a
writable index, and the process exits 0. Errors before serving (a bad artifact, a busy index,
a missing key file) print one line and exit 2, as every lame-* command does.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Sequence

import click

from lame_runtime.artifact.contract import PRECISIONS
from lame_runtime.cli.tensorrt import embedder_options, gpu_options
from lame_runtime.cli.tools import invoke
from lame_runtime.errors import InputError

PROG = "lame-serve"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    required=True,
    type=click.Path(file_okay=False),
    help="Export artifact directory (lame-export).",
)
@click.option(
    "--model-name",
    default=None,
    help="The name clients pass as `model` (default: the artifact folder's name).",
)
@click.option(
    "--index",
    "index_path",
    default=None,
    help="Serve this lame-search index (folder or prefix) on /v1/search.",
)
@click.option("--qdrant", default=None, help="Serve a Qdrant collection (folder or http URL).")
@click.option("--collection", default="lame", show_default=True, help="With --qdrant.")
@click.option(
    "--writable",
    is_flag=True,
    help="Allow POST/DELETE /v1/documents (needs --api-key-file); the index is saved "
    "every --save-interval seconds and on shutdown.",
)
@click.option(
    "--save-interval",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds between saves of a changed writable index (0: on shutdown only).",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told otherwise)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="ONNX Runtime intra-op threads (default: one per core).",
)
@click.option(
    "--spin/--no-spin",
    default=False,
    show_default=True,
    help="Let idle ONNX Runtime threads spin-wait (fastest back to back, but they "
    "take the cores the event loop and image decoding need).",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Bearer keys, one per line; required for writes.",
)
@click.option(
    "--auth-reads", is_flag=True, help="Also require a key for embeddings, search, models and metrics."
)
@click.option(
    "--image-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Allow local image paths in requests, only under this folder.",
)
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per model call."
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="How long a batch's first row waits for more rows.",
)
@click.option("--no-batching", is_flag=True, help="One request per model call.")
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Queued rows before 503 + Retry-After.",
)
@click.option(
    "--max-items", type=click.IntRange(min=1), default=64, show_default=True, help="Items per request."
)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=8 * 1024 * 1024, show_default=True)
@click.option("--max-text-chars", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a request may wait for the model (0: none).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Allow browser calls from this origin (repeatable; default: CORS off).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
@gpu_options
def command(
    model,
    model_name,
    index_path,
    qdrant,
    collection,
    writable,
    save_interval,
    host,
    port,
    precision,
    threads,
    spin,
    api_key_file,
    auth_reads,
    image_root,
    max_batch,
    max_wait_ms,
    no_batching,
    max_queue,
    max_items,
    max_body_bytes,
    max_text_chars,
    request_timeout,
    cors_origins,
    log_level,
    access_log,
    **gpu,
) -> int:
    """Serve an artifact over HTTP: OpenAI-style /v1/embeddings, /v1/search over an index,
    /health, /ready and Prometheus /metrics (torch-free)."""
    try:
        import uvicorn

        from lame_runtime.serve.app import create_app
    except ImportError as err:
        raise click.ClickException(
            f'lame-serve needs the serve extra: pip install "lame-embed[serve]" ({err})'
        ) from None
    import warnings

    from lame_runtime.embedder import Embedder
    from lame_runtime.serve.config import ServeConfig, read_api_keys
    from lame_runtime.serve.documents import Documents

    if index_path and qdrant:
        raise InputError("give --index or --qdrant, not both")
    if writable and not (index_path or qdrant):
        raise InputError("--writable needs --index or --qdrant (the collection to write)")
    if writable and not api_key_file:
        raise InputError("--writable needs --api-key-file: writes are never anonymous")
    if auth_reads and not api_key_file:
        raise InputError("--auth-reads needs --api-key-file")
    keys = read_api_keys(api_key_file) if api_key_file else ()
    config = ServeConfig(
        model_name=model_name,
        max_body_bytes=max_body_bytes,
        max_items=max_items,
        max_text_chars=max_text_chars,
        max_pixels=gpu.get("max_pixels"),
        image_root=Path(image_root) if image_root else None,
        batching=not no_batching,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        request_timeout_s=request_timeout,
        api_keys=keys,
        auth_reads=auth_reads,
        cors_origins=tuple(cors_origins),
        writable=writable,
        save_interval_s=save_interval,
    )
    embedder = Embedder(model, precision=precision, **embedder_options(**gpu, threads=threads, spin=spin))
    documents = None
    if index_path:
        documents = Documents.open_index(
            index_path, embedder.dim, writable, save_interval, embedder.dimensions
        )
    elif qdrant:
        documents = Documents.open_qdrant(qdrant, collection, embedder.dim, writable, embedder.dimensions)
    if documents is not None and documents.dim not in embedder.dimensions:
        documents.close()
        raise InputError(
            f"the documents hold {documents.dim}-dim vectors, the model serves "
            f"{list(embedder.dimensions)}: they were built with another model"
        )
    app = create_app(embedder, config, documents)
    # Truncation is reported to the client (X-LaME-Truncated), not logged per text.
    warnings.filterwarnings("ignore", message="text of .* truncated")
    if host not in LOOPBACK:
        click.echo(
            f"{PROG}: binding {host}: reachable from other machines"
            + ("" if auth_reads else " (reads need no key: add --auth-reads)"),
            err=True,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=int(request_timeout) + 5,
            lifespan="on",
            server_header=False,
        )
    )
    click.echo(
        f"{PROG}: serving {app.state.service.name} ({embedder.dim}-dim, "
        f"{embedder.precision}) on http://{host}:{port}",
        err=True,
    )
    # uvicorn handles SIGTERM/SIGINT (drain, lifespan shutdown), then restores the handlers
    # it found and raises the signal again, so that the default handler kills the process
    # with it. A graceful shutdown is a success here (exit 0, what service managers expect):
    # the handlers it finds and restores are these no-ops.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:  # the socket or the app's startup failed; uvicorn logged why
        click.echo(f"{PROG}: error: the server did not start (see the log above)", err=True)
        if documents is not None:
            documents.close()
        return 1
    failed = app.state.service.shutdown_error
    if failed is not None:  # one line, exit 2 (tools.invoke): the last adds were not saved
        raise failed
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, PROG, (ValueError, TypeError, FileNotFoundError, OSError))


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # python -m lame_runtime.serve.cli (the tests' server processes)
    run()
