"""``create_app(embedder, config, documents)``: the ASGI app (Starlette), no socket needed.

Tests mount it with ``httpx.ASGITransport`` or run it under uvicorn; ``lame-serve`` does the
latter. Event-loop rules: nothing blocking runs on the loop. Image decoding and tokenisation
run in the thread pool, the model on the batcher's one worker thread, index searches and
writes in the thread pool. Every error leaves through ``errors.describe``: one status and one
JSON body, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lame_runtime.embedder import unit_prefix
from lame_runtime.errors import InputError
from lame_runtime.inputs.preprocess import format_query
from lame_runtime.serve import schema, visuals
from lame_runtime.serve.batching import Batcher, Job
from lame_runtime.serve.boundary import HostCheck, read_body
from lame_runtime.serve.config import ServeConfig
from lame_runtime.serve.documents import Documents
from lame_runtime.serve.errors import (
    HTTPError,
    NotFound,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    describe,
    error_body,
)
from lame_runtime.serve.guard import Guard, render
from lame_runtime.serve.metrics import METRICS_TYPE, Metrics
from lame_runtime.serve.responses import embeddings_body
from lame_runtime.serve.tokens import token_rows

log = logging.getLogger("lame_runtime.serve")
TRUNCATED_HEADER = "X-LaME-Truncated"  # the input indices cut to the model's max_text_tokens
DRAIN_FACTOR = 4
INLINE_ROWS = 4  # text-only requests up to this many rows are prepared on the event loop  # an oversized body up to 4x the limit is read (and dropped) before the 413


class ClientGone(Exception):
    """The client disconnected while its rows were queued; there is nobody to answer."""


class Service:
    """The state behind the routes: the model, its batcher, the documents, the metrics."""

    def __init__(self, embedder: Any, config: ServeConfig, documents: Documents | None):
        if documents is not None and documents.writable and not config.api_keys:
            raise InputError(
                "a writable index needs API keys (--api-key-file): writes are never open to anonymous clients"
            )
        self.embedder, self.config, self.documents = embedder, config, documents
        self.name = config.model_name or embedder.artifact.path.name
        self.text = embedder.preprocessor.text
        self.image_tokens = embedder.preprocessor.image.num_tokens
        self.native = embedder.preprocessor.image.native  # several images per row, videos
        self.metrics = Metrics()
        if documents is not None:
            documents.on_save = self._saved
        self.ready = False
        self.on_ready: Callable[[], None] = lambda: None  # lame-serve announces itself here
        self.shutdown_error: BaseException | None = None
        self.batcher = Batcher(
            self._encode,
            config.max_batch,
            config.max_wait_ms / 1000.0,
            config.max_queue,
            config.batching,
            config.retry_after_s,
            observe=self._observe,
            on_depth=self.metrics.queue_depth.set,
        )

    # ------------------------------------------------------------------ model thread
    def _encode(self, rows: list[Any], images: list[Any]) -> np.ndarray:
        # Token rows from _prepare: nothing is tokenised again here (tokens.token_rows). On the
        # event loop, not here: on a CPU the model thread is the busier one (2 cores, small
        # model: 1,070-1,150 requests/s tokenising on the loop, 1,020-1,050 here).
        vectors: np.ndarray = self.embedder.encode_tokens(rows, images, batch_size=self.config.max_batch)
        return vectors

    def _saved(self, ok: bool) -> None:
        """A save of the index finished (``Documents.save``): what /metrics reports of it."""
        if not ok:
            self.metrics.save_failures.inc()
        self.metrics.save_failing.set(0 if ok else 1)
        if self.documents is not None:
            self.metrics.unsaved.set(self.documents.unsaved)

    def _observe(self, jobs: list[Job], seconds: float) -> None:
        rows = [image for job in jobs for image in job.images]
        image_rows = sum(image is not None for image in rows)
        text_graph = "text" if self.embedder.routes_text else "full"
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.batch_seconds.observe(seconds)
        if image_rows:
            self.metrics.rows.labels("full").inc(image_rows)
        if len(rows) - image_rows:
            self.metrics.rows.labels(text_graph).inc(len(rows) - image_rows)

    # ------------------------------------------------------------------ helpers
    def authorize(self, request: Request, write: bool) -> None:
        if not (write or self.config.auth_reads):
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.config.key_ok(token.strip()):
            self.metrics.rejected.labels("unauthorized").inc()
            raise Unauthorized(
                "missing or wrong API key (send 'Authorization: Bearer <key>' "
                "with a key from the server's --api-key-file)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        message = f"request body exceeds {limit:,} bytes (--max-body-bytes)"
        if declared.isdigit() and int(declared) > limit * DRAIN_FACTOR:
            # Not worth reading: the unread rest would be taken for the next request, so the
            # answer says the connection closes (and uvicorn closes it).
            self.metrics.rejected.labels("body_too_large").inc()
            raise PayloadTooLarge(message, headers={"Connection": "close"})
        chunks, size, drained = [], 0, True
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit * DRAIN_FACTOR:
                drained = False
                break
        if size > limit:
            self.metrics.rejected.labels("body_too_large").inc()
            raise PayloadTooLarge(message, headers={} if drained else {"Connection": "close"})
        return read_body(b"".join(chunks))

    async def embed(
        self,
        request: Request,
        rows: list[schema.Row],
        input_type: str,
        instruction: str | None = None,
        task: str | None = None,
    ) -> tuple[np.ndarray, int, list[int]]:
        """-> (unit vectors, tokens the model ran on, indices of truncated texts)."""
        self.batcher.arrive()
        try:
            visuals.check_rows(rows, self.native)
            if any(row.image is not None or row.video is not None for row in rows) or len(rows) > INLINE_ROWS:
                token_ids, tokens, truncated = await run_in_threadpool(
                    self._prepare, rows, input_type, instruction, task
                )
            else:  # a few texts tokenise in microseconds: a thread hop would cost more
                token_ids, tokens, truncated = self._prepare(rows, input_type, instruction, task)
            job = self.batcher.submit(token_ids, [row.image for row in rows])
        except HTTPError as err:
            self.metrics.rejected.labels(err.code).inc()
            raise
        finally:
            self.batcher.leave()
        return await self._wait(request, job), tokens, truncated

    def _prepare(
        self, rows: list[schema.Row], input_type: str, instruction: str | None, task: str | None
    ) -> tuple[list[Any], int, list[int]]:
        """Blocking: decode images, apply the trained instruction, tokenise each text once
        (``tokens.token_rows``): -> (the token rows, their token count, truncated rows)."""
        if self.native:  # row.image becomes the row's list of visuals
            visuals.decode_rows(rows, self.embedder.preprocessor.image, self.config)
        else:
            schema.decode(
                rows, self.embedder.preprocessor.image, self.config.max_pixels, self.config.image_root
            )
        texts = [row.text for row in rows]
        marks = [True if row.image is not None else None for row in rows]
        if input_type == "query":
            chosen = self.embedder.query_instructions(texts, marks, instruction, task)
        else:  # what Embedder.encode_documents applies
            document = (
                instruction if instruction is not None else self.embedder.artifact.instruction("document")
            )
            chosen = [document] * len(rows)
        formatted = [format_query(text, inst) for text, inst in zip(texts, chosen)]
        token_ids, truncated = self._tokenise(formatted, [row.image for row in rows])
        if truncated:
            self.metrics.truncated.inc(len(truncated))
        return token_ids, sum(len(row) for row in token_ids), truncated

    def _tokenise(self, formatted: list[str | None], images: list[Any]) -> tuple[list[list[int]], list[int]]:
        if self.native:  # images[i]: row i's list of visuals
            merge = self.embedder.preprocessor.image.merge_size
            return visuals.token_rows(self.text, formatted, images, merge)
        return token_rows(self.text, formatted, [image is not None for image in images], self.image_tokens)

    async def _wait(self, request: Request, job: Job) -> np.ndarray:
        """The job's vectors. If the client leaves first (``ClientGone``) or the request
        outlives ``--request-timeout`` (``Timeout``), the job leaves the queue uncomputed.
        Awaits the job's own future: one watcher task and one timer, no ``asyncio.wait``."""
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self._watch(request, job))
        timeout = self.config.request_timeout_s
        timer = loop.call_later(timeout, self._give_up, job, "timeout") if timeout else None
        try:
            vectors: np.ndarray = await job.future
            return vectors
        finally:
            watcher.cancel()
            if timer is not None:
                timer.cancel()

    async def _watch(self, request: Request, job: Job) -> None:
        await _disconnected(request)
        self._give_up(job, "client_gone")

    def _give_up(self, job: Job, reason: str) -> None:
        if job.future.done():
            return
        self.batcher.cancel(job)
        self.metrics.rejected.labels(reason).inc()
        if reason == "client_gone":
            job.future.set_exception(ClientGone())
        else:
            job.future.set_exception(
                Timeout(
                    f"the request was not served within {self.config.request_timeout_s:g} s "
                    "(--request-timeout); the server is overloaded or the batch is too large"
                )
            )

    def need_documents(self) -> Documents:
        if self.documents is None:
            raise NotFound(
                "this server serves no index: start lame-serve with --index or --qdrant", code="no_index"
            )
        return self.documents

    def output(self, vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
        if dimensions is None or dimensions == vectors.shape[1]:
            return vectors
        # Matryoshka: the leading `dimensions` components, renormalised to unit length.
        return unit_prefix(vectors, dimensions)

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        self.batcher.start()
        if self.documents is not None:
            self.documents.start()
            self.metrics.index_size.set(len(self.documents))
        # /ready means a first vector has been computed (both graphs, when there are two).
        cfg = self.embedder.preprocessor.image
        pictures: list[Any] = (
            visuals.warm_visuals(cfg)
            if self.native
            else [None, np.zeros((cfg.height, cfg.width, 3), np.uint8)]
        )
        warm, _ = self._tokenise(["warm-up", None], pictures)
        job = self.batcher.submit(warm, pictures)
        await job.future
        self.metrics.set_providers(self.embedder)
        self.ready = True
        self.on_ready()

    async def shutdown(self) -> None:
        self.ready = False
        await run_in_threadpool(self.batcher.stop)  # queued jobs finish first
        if self.documents is not None:
            try:
                await run_in_threadpool(self.documents.close)  # the final save
            except Exception as err:  # noqa: BLE001  (kept for the CLI's exit code)
                # A failed final save (a full disk) loses the adds since the last save: the
                # process must not exit 0 as if nothing happened.
                log.error("the final save of the index failed: %s", err)
                self.shutdown_error = err


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body is already read: nothing else comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _error_response(err: BaseException) -> Response:
    status, body, headers = describe(err)
    if status >= 500 and not isinstance(err, HTTPError):
        log.error("request failed", exc_info=err)
    # Rendered escaped: an error must never fail to encode what a message quotes.
    return Response(render(body), status_code=status, headers=headers, media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(service: Service, name: str, handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ClientGone:
            response = Response(status_code=499)  # nginx's "client closed request"
        except Exception as err:  # noqa: BLE001  (every error becomes one JSON answer)
            response = _error_response(err)
        service.metrics.requests.labels(name, str(response.status_code)).inc()
        service.metrics.latency.labels(name).observe(time.perf_counter() - started)
        return response

    return run


def create_app(
    embedder: Any, config: ServeConfig | None = None, documents: Documents | None = None
) -> Starlette:
    """The service over a loaded ``Embedder`` (and optionally its ``Documents``).

    Startup (the ASGI lifespan) starts the model worker and computes a first vector;
    shutdown finishes queued work and saves a writable index.
    """
    service = Service(embedder, config or ServeConfig(), documents)
    cfg = service.config

    async def embeddings(request: Request) -> Response:
        service.authorize(request, write=False)
        body = await service.body(request)
        req = schema.parse_embeddings(body, service.name, embedder.artifact.dimensions, cfg)
        vectors, tokens, truncated = await service.embed(
            request, req.rows, req.input_type, req.instruction, req.task
        )
        vectors = service.output(vectors, req.dimensions)
        headers = {TRUNCATED_HEADER: ",".join(map(str, truncated))} if truncated else {}
        payload = embeddings_body(vectors, req.encoding_format, service.name, tokens, truncated)
        return Response(payload, headers=headers, media_type="application/json")

    async def search(request: Request) -> Response:
        service.authorize(request, write=False)
        body = await service.body(request)
        row, k, prefix, input_type = schema.parse_search(body, service.name, cfg)
        documents = service.need_documents()
        vectors, tokens, truncated = await service.embed(request, [row], input_type)
        vectors = service.output(vectors, documents.dim)  # a Matryoshka index's size
        hits = await run_in_threadpool(documents.search, vectors[0], k, prefix)
        return JSONResponse(
            {
                "object": "list",
                "data": hits,
                "model": service.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "truncated": truncated,
            }
        )

    async def add_documents(request: Request) -> Response:
        service.authorize(request, write=True)
        documents = service.need_documents()
        documents.check_writes()
        body = await service.body(request)
        ids, rows, payloads = schema.parse_documents(body, cfg)
        vectors, tokens, truncated = await service.embed(request, rows, "document")
        vectors = service.output(vectors, documents.dim)
        await run_in_threadpool(documents.add, ids, vectors, payloads)
        service.metrics.index_size.set(len(documents))
        return JSONResponse(
            {
                "object": "list",
                "added": len(ids),
                "ids": ids,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "truncated": truncated,
            }
        )

    async def delete_documents(request: Request) -> Response:
        service.authorize(request, write=True)
        documents = service.need_documents()
        documents.check_writes()
        ids = schema.parse_ids(await service.body(request), cfg)
        await run_in_threadpool(documents.remove, ids)
        service.metrics.index_size.set(len(documents))
        return JSONResponse({"deleted": len(ids), "ids": ids})

    async def models(request: Request) -> Response:
        service.authorize(request, write=False)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": service.name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "lame",
                        "dimensions": list(embedder.artifact.dimensions),
                        "max_text_tokens": service.text.max_text_tokens,
                    }
                ],
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if not service.ready:
            return JSONResponse(
                error_body("the model is loading", "overloaded_error", "not_ready"), status_code=503
            )
        if documents is not None and documents.save_error is not None:
            # Not ready for writes: acknowledged ones might not survive a restart. Reads still
            # work; an operator (or a load balancer) sees why here and in the metrics.
            return JSONResponse(
                error_body(
                    f"saving the index fails ({documents.save_error}); {documents.unsaved} "
                    "acknowledged write(s) are kept in memory and the save is retried",
                    "api_error",
                    "index_save_failing",
                ),
                status_code=503,
            )
        return JSONResponse({"status": "ready", "model": service.name})

    async def metrics(request: Request) -> Response:
        service.authorize(request, write=False)
        return Response(service.metrics.render(), media_type=METRICS_TYPE)

    routes = [
        Route("/v1/embeddings", endpoint(service, "embeddings", embeddings), methods=["POST"]),
        Route("/v1/search", endpoint(service, "search", search), methods=["POST"]),
        Route("/v1/documents", endpoint(service, "documents_add", add_documents), methods=["POST"]),
        Route("/v1/documents", endpoint(service, "documents_delete", delete_documents), methods=["DELETE"]),
        Route("/v1/models", endpoint(service, "models", models), methods=["GET"]),
        Route("/health", endpoint(service, "health", health), methods=["GET"]),
        Route("/ready", endpoint(service, "ready", ready), methods=["GET"]),
        Route("/metrics", endpoint(service, "metrics", metrics), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error"
        )
        path = ascii(request.scope.get("path", ""))[1:-1]  # as sent, escaped; not from the Host
        message = {
            404: f"no such endpoint: {request.method} {path}",
            405: f"method {request.method} is not allowed on {path}",
        }.get(exc.status_code, str(exc.detail))
        service.metrics.requests.labels("other", str(exc.status_code)).inc()
        return Response(
            render(error_body(message, kind, str(exc.status_code))),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
            media_type="application/json",
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    def count(endpoint_name: str, status: int) -> None:
        service.metrics.requests.labels(endpoint_name, str(status)).inc()

    # Outermost: the Host check and the one answer for anything the routes let through.
    middleware = [Middleware(Guard, hosts=HostCheck(cfg.allowed_hosts), count=count)]
    if cfg.cors_origins:  # off unless asked for: a browser page must not call us by default
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cfg.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={StarletteHTTPException: http_error},  # type: ignore[dict-item]
    )
    app.state.service = service
    return app
