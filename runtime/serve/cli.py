"""``lame-serve``: the embedding and search service on uvicorn (``main(argv)`` for tests).

SIGTERM / Ctrl-C: uvicorn stops accepting connections and waits for the requests in flight
(at most ``--request-timeout`` + 5 s); then the app's shutdown finishes queued rows and saves a
writable index, and the process exits 0. Errors before serving (a bad artifact, a busy index,
a missing key file, a busy port, a failed warm-up) print one line and exit 2, as every lame-*
command does: the socket is bound and the model warmed up before "serving ... on" is printed.
"""

from __future__ import annotations

import errno
import gc
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

import click

from lame_runtime.artifact.contract import PRECISIONS
from lame_runtime.cli.tensorrt import embedder_options, gpu_options
from lame_runtime.cli.tools import invoke
from lame_runtime.errors import BusyError, InputError
from lame_runtime.serve.config import LOOPBACK_HOSTS

PROG = "lame-serve"
# How long the event loop may keep the GIL while the model thread waits for it. The model
# thread needs it back each time ONNX Runtime returns (to hand the vectors over and feed the
# next batch), and at Python's default 5 ms a busy event loop held it that long: on 2 cores the
# small model's batches took 18 ms instead of 12 and the service ran at 840 single-item
# requests/s; at 0.1 ms, 1,200-1,350 (docs/serving.md#throughput).
GIL_SWITCH_INTERVAL_S = 0.0001


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lame-embed", prog_name=PROG)
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
    help="Allow local image and video paths (a file or a folder of frames) in requests, only under this folder.",
)
@click.option(
    "--max-images-per-item",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Images in one item (native-resolution models; a fixed-size one takes one).",
)
@click.option(
    "--max-video-frames",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Frames one video may hold (files in a folder, frames in a file).",
)
@click.option(
    "--max-video-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Duration of a video file.",
)
@click.option(
    "--max-video-pixels",
    type=click.IntRange(min=1),
    default=100_000_000,
    show_default=True,
    help="Pixels of one video, all its frames together (as decoded and as resized for the model).",
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
    "--allowed-hosts",
    "allowed_hosts",
    multiple=True,
    help="Host header names to answer (repeatable or comma-separated; '*.example.com', '*'). "
    "Default: the loopback names and --host. Others get 400 (DNS rebinding).",
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
    model: Any,
    model_name: Any,
    index_path: Any,
    qdrant: Any,
    collection: Any,
    writable: Any,
    save_interval: Any,
    host: Any,
    port: Any,
    precision: Any,
    threads: Any,
    spin: Any,
    api_key_file: Any,
    auth_reads: Any,
    image_root: Any,
    max_images_per_item: Any,
    max_video_frames: Any,
    max_video_seconds: Any,
    max_video_pixels: Any,
    max_batch: Any,
    max_wait_ms: Any,
    no_batching: Any,
    max_queue: Any,
    max_items: Any,
    max_body_bytes: Any,
    max_text_chars: Any,
    request_timeout: Any,
    allowed_hosts: Any,
    cors_origins: Any,
    log_level: Any,
    access_log: Any,
    **gpu: Any,
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
        max_images_per_item=max_images_per_item,
        max_video_frames=max_video_frames,
        max_video_seconds=max_video_seconds,
        max_video_pixels=max_video_pixels,
        batching=not no_batching,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        request_timeout_s=request_timeout,
        api_keys=keys,
        auth_reads=auth_reads,
        cors_origins=tuple(cors_origins),
        allowed_hosts=hosts_allowed(allowed_hosts, host, LOOPBACK_HOSTS),
        writable=writable,
        save_interval_s=save_interval,
    )
    embedder = load_embedder(model, precision, threads, spin, gpu)
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
    sock = bind(host, port)  # before anything is announced: a busy port is one line, exit 2
    app = create_app(embedder, config, documents)
    # Truncation is reported to the client (X-LaME-Truncated), not logged per text.
    warnings.filterwarnings("ignore", message="text of .* truncated")
    if host not in LOOPBACK_HOSTS:
        click.echo(
            f"{PROG}: binding {host}: reachable from other machines"
            + ("" if auth_reads else " (reads need no key: add --auth-reads)")
            + ("" if allowed_hosts else "; add --allowed-hosts with the name clients use"),
            err=True,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=int(request_timeout) + 5,
            lifespan="on",
            server_header=False,
        )
    )
    service = app.state.service
    shown = f"[{host}]" if ":" in host else host
    # Announced once the socket is bound and the model has computed its first vector.
    announced = []

    def announce() -> None:
        announced.append(True)
        # What is loaded now (model, tokenizer, app) stays for the process's life: frozen, the
        # cyclic collector stops walking it on every full collection (a few % of each request).
        gc.collect()
        gc.freeze()
        click.echo(
            f"{PROG}: serving {service.name} ({embedder.dim}-dim, {embedder.precision}) on "
            f"http://{shown}:{sock.getsockname()[1]}",
            err=True,
        )

    service.on_ready = announce
    # uvicorn handles SIGTERM/SIGINT (drain, lifespan shutdown), then restores the handlers
    # it found and raises the signal again, so that the default handler kills the process
    # with it. A graceful shutdown is a success here (exit 0, what service managers expect):
    # the handlers it finds and restores are these no-ops.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        server.run(sockets=[sock])
    finally:
        sys.setswitchinterval(interval)
        sock.close()
    if not announced:  # the app's startup (the warm-up) failed; uvicorn logged why
        if documents is not None:
            documents.close()
        raise InputError("the server did not start: the model's warm-up failed (see the log above)")
    failed = service.shutdown_error
    if failed is not None:  # one line, exit 2 (tools.invoke): the last adds were not saved
        raise failed
    return 0


def load_embedder(model: str, precision: str, threads: int | None, spin: bool, gpu: dict[str, Any]) -> Any:
    """The one place lame-serve builds its ``Embedder`` (from the CLI's options)."""
    from lame_runtime.embedder import Embedder

    return Embedder(model, precision=precision, **embedder_options(**gpu, threads=threads, spin=spin))


def hosts_allowed(given: Sequence[str], host: str, loopback: Sequence[str]) -> tuple[str, ...]:
    """--allowed-hosts (repeatable, comma-separated) or, by default, the loopback names plus
    the address bound (unless it is a wildcard: then only the names given are answered)."""
    names = [name.strip() for value in given for name in value.split(",") if name.strip()]
    if names:
        return tuple(names)
    extra = () if host in ("0.0.0.0", "::", "") else (host,)
    return tuple(dict.fromkeys((*loopback, *extra)))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a busy port or a bad address is one ``OSError``
    line naming it (exit 2), before anything else happens."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise InputError(
            f"--host {host!r} is not an address this machine can bind ({err.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise BusyError(f"cannot listen on {host}:{port}: the port is in use (--port)") from None
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, PROG, (ValueError, TypeError, FileNotFoundError, OSError))


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # python -m lame_runtime.serve.cli (the tests' server processes)
    run()
