"""lame-serve's trusted boundaries, each tried the way an attacker or a careless client would,
against a real server over real HTTP on 127.0.0.1: containment of --image-root under a racing
symlink, OS and parser errors at the request boundary, keep-alive after every error, the
Host allow-list, key-file hygiene, no server paths in client errors, and start-up exit codes."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import KEY, ThreadServer, data_uri, free_port, png_bytes, write_key_file  # noqa: E402

from lame_runtime import Embedder  # noqa: E402
from lame_runtime.serve.app import create_app  # noqa: E402
from lame_runtime.serve.config import ServeConfig  # noqa: E402
from lame_runtime.serve.documents import Documents  # noqa: E402

pytestmark = pytest.mark.runtime
NAME = "tiny-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
RACE_REQUESTS = 400  # bounded: the old check-then-open leaked in a few percent of these
SWAPPER = """
import os, sys, time
root, outside = sys.argv[1], sys.argv[2]
end = time.monotonic() + 300  # bounded even if the test dies
i = 0
while time.monotonic() < end:
    tmp = os.path.join(root, ".swap-tmp")
    os.symlink("inside.png" if i % 2 else outside, tmp)
    os.replace(tmp, os.path.join(root, "swap"))
    i += 1
"""


@pytest.fixture(scope="module")
def embedder(runtime_artifact) -> Embedder:
    return Embedder(runtime_artifact)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """--image-root with a good image, traps inside it, and a secret image outside it."""
    base = tmp_path_factory.mktemp("boundary")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "inside.png").write_bytes(png_bytes(10))
    (outside / "secret.png").write_bytes(png_bytes(11))
    (root / "folder").mkdir()
    os.mkfifo(root / "fifo")
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    os.symlink(outside / "secret.png", root / "escape")
    os.symlink("inside.png", root / "swap")
    return root, outside


@pytest.fixture(scope="module")
def server(embedder, layout, tmp_path_factory):
    documents = Documents.open_index(
        tmp_path_factory.mktemp("idx") / "index", embedder.dim, writable=True, save_interval_s=0
    )
    config = ServeConfig(
        model_name=NAME,
        image_root=layout[0],
        api_keys=(KEY,),
        writable=True,
        max_body_bytes=256 * 1024,
        request_timeout_s=30,
    )
    with ThreadServer(create_app(embedder, config, documents)) as running:
        yield running


def image_body(ref: str) -> dict:
    return {"model": NAME, "input": [[{"type": "image_url", "image_url": {"url": ref}}]]}


# ---------------------------------------------------------------- class 2: containment race
def test_a_symlink_swapped_during_requests_never_reads_outside_the_root(server, layout):
    root, outside = layout
    with httpx.Client(base_url=server.url, timeout=30) as client:
        inside_vec = client.post("/v1/embeddings", json=image_body(data_uri(png_bytes(10)))).json()
        secret_vec = client.post("/v1/embeddings", json=image_body(data_uri(png_bytes(11)))).json()
    inside_vec = np.asarray(inside_vec["data"][0]["embedding"])
    secret_vec = np.asarray(secret_vec["data"][0]["embedding"])
    # The tiny model embeds any two images alike, but not identically: a file read through
    # the path gives exactly its data URI's vector, so each answer is told by its nearest.
    gap = float(np.abs(inside_vec - secret_vec).max())
    assert gap > 1e-4

    # Another process repoints root/swap (atomically: a new link renamed over it) between the
    # file inside and the one outside, as fast as it can, for as long as the clients run: a
    # real attacker's timing, not this process's GIL slices.
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root), str(outside / "secret.png")])

    def client_loop(count: int) -> list[tuple[int, str, np.ndarray | None]]:
        seen = []
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(count):
                answer = client.post("/v1/embeddings", json=image_body("swap"))
                vector = answer.json()["data"][0]["embedding"] if answer.status_code == 200 else None
                seen.append((answer.status_code, answer.text, None if vector is None else np.asarray(vector)))
        return seen

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = [a for part in pool.map(client_loop, [RACE_REQUESTS // 4] * 4) for a in part]
    finally:
        swapper.kill()
        swapper.wait(10)
    statuses = collections.Counter(status for status, _, _ in answers)
    leaked = sum(
        1
        for _, _, vector in answers
        if vector is not None and np.abs(vector - secret_vec).max() < np.abs(vector - inside_vec).max()
    )
    assert leaked == 0, f"{leaked} of {RACE_REQUESTS} requests read the file outside --image-root"
    for status, text, vector in answers:
        if vector is None:
            assert status in (400, 403), text
            assert str(outside) not in text and str(root) not in text, text  # no server path
        else:
            assert np.abs(vector - inside_vec).max() < gap / 10
    assert statuses[200] > 0 and statuses[403] > 0, statuses  # both sides of the swap were hit


# ---------------------------------------------------- classes 5 and 7: the request boundary
LONG = "x" * 300 + ".png"
BOUNDARY_CASES = [
    # (name, raw JSON body, path, status, code)
    (
        "NUL byte in a path",
        json.dumps(image_body("in\u0000side.png")),
        "/v1/embeddings",
        400,
        "invalid_input",
    ),
    ("300-character name", json.dumps(image_body(LONG)), "/v1/embeddings", 400, "invalid_input"),
    ("symlink loop", json.dumps(image_body("loop-a")), "/v1/embeddings", 400, "invalid_input"),
    ("a folder", json.dumps(image_body("folder")), "/v1/embeddings", 400, "invalid_input"),
    (
        "a file named as a folder",
        json.dumps(image_body("inside.png/")),
        "/v1/embeddings",
        400,
        "invalid_input",
    ),
    ("a fifo", json.dumps(image_body("fifo")), "/v1/embeddings", 400, "invalid_input"),
    ("symlink out", json.dumps(image_body("escape")), "/v1/embeddings", 403, "path_not_allowed"),
    (
        "dot-dot out",
        json.dumps(image_body("../outside/secret.png")),
        "/v1/embeddings",
        403,
        "path_not_allowed",
    ),
    ("missing file", json.dumps(image_body("nope.png")), "/v1/embeddings", 400, "file_not_found"),
    (
        "lone surrogate in a path",
        json.dumps(image_body("a")).replace('"a"', '"a\\ud800.png"'),
        "/v1/embeddings",
        400,
        "invalid_input",
    ),
    (
        "JSON nested 100,000 deep",
        '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "/v1/embeddings",
        400,
        "invalid_json",
    ),
    ("huge integer", '{"query": "x", "k": 1' + "0" * 5000 + "}", "/v1/search", 400, "invalid_json"),
    (
        "repeated key",
        '{"model": "tiny-test", "input": "a", "input": "b"}',
        "/v1/embeddings",
        400,
        "invalid_json",
    ),
    ("NaN literal", '{"query": "x", "k": NaN}', "/v1/search", 400, "invalid_type"),
    ("lone surrogate in a query", '{"query": "x\\udfff"}', "/v1/search", 400, "invalid_input"),
    (
        "lone surrogate in a model name",
        '{"model": "\\ud800", "input": "x"}',
        "/v1/embeddings",
        400,
        "invalid_input",
    ),
]


def _paths_in(text: str, layout) -> list[str]:
    return [str(p) for p in (*layout, layout[0].resolve(), layout[1].resolve()) if str(p) in text]


@pytest.mark.parametrize("case", BOUNDARY_CASES, ids=[c[0] for c in BOUNDARY_CASES])
def test_os_and_parser_errors_are_400s_naming_the_item_never_a_server_path(server, layout, case):
    name, body, path, status, code = case
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == code and error["type"].endswith("_error"), error
        assert "\n" not in error["message"] and "Traceback" not in answer.text
        assert not _paths_in(answer.text, layout), answer.text  # class 7: no server path
        if path == "/v1/embeddings" and "image_url" in body:
            assert "input[0][0].image_url" in error["message"], error  # the item, as sent
        good = client.post("/v1/embeddings", json={"model": NAME, "input": "still serving"})
        assert good.status_code == 200


def test_a_path_outside_is_named_as_sent(server, layout):
    answer = httpx.post(server.url + "/v1/embeddings", json=image_body("escape"), timeout=30)
    message = answer.json()["error"]["message"]
    assert answer.status_code == 403 and "'escape'" in message and not _paths_in(message, layout)


# ---------------------------------------------------------------- class 6: keep-alive
def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    """One complete HTTP/1.1 response (Content-Length framed), or None on EOF/reset."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except (ConnectionResetError, TimeoutError):
        return None
    return int(lines[0].split()[1]), headers, body[:length]


def _request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_every_error_leaves_the_connection_usable_or_says_it_closes(server):
    """One raw keep-alive socket: each bad request gets a complete JSON error, then a good
    request on the same socket gets its answer. A refusal that cannot read the body must
    say ``Connection: close`` and close."""
    errors = [_request("POST", "/v1/embeddings", case[1].encode()) for case in BOUNDARY_CASES]
    errors += [
        _request("POST", "/v1/embeddings", b'{"input": "\xff"}'),  # not UTF-8
        _request("GET", "/v1/nope"),
        _request("PUT", "/v1/embeddings"),
        _request("POST", "/v1/documents", b'{"documents": []}'),  # no key
        _request(
            "POST",
            "/v1/documents",
            b'{"documents": [{"id": "\\ud800", "text": "x"}]}',
            f"Authorization: Bearer {KEY}\r\n",
        ),
    ]
    good = _request("POST", "/v1/embeddings", json.dumps({"model": NAME, "input": "ok"}).encode())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for raw in errors:
            sock.sendall(raw)
            answer = _read_response(sock)
            assert answer is not None, f"connection dropped after {raw[:60]!r}"
            status, headers, body = answer
            assert 400 <= status < 600 and headers.get("connection", "") != "close"
            assert set(json.loads(body)["error"]) >= {"message", "type", "code"}
            sock.sendall(good)
            answer = _read_response(sock)
            assert answer is not None and answer[0] == 200, f"next request failed after {raw[:60]!r}"


def test_a_refusal_that_leaves_the_body_unread_says_it_closes(server):
    """A declared body far over the limit is refused unread: the rest of it would be read as
    the next request, so the answer must say ``Connection: close``, and close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            _request("POST", "/v1/embeddings")[:-2].replace(
                b"Content-Length: 0", b"Content-Length: 999999999"
            )
            + b"\r\n"
        )
        answer = _read_response(sock)
        assert answer is not None and answer[0] == 413
        assert answer[1].get("connection") == "close"
        assert sock.recv(1) == b""  # and it does close


def test_pooled_httpx_client_sees_no_reset_after_errors(server):
    with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=1)) as client:
        for _, body, path, status, _ in BOUNDARY_CASES:
            assert client.post(path, content=body.encode()).status_code == status
            assert client.get("/health").status_code == 200


# ---------------------------------------------------------------- class 3: Host header
def test_host_header_must_be_allowed(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for host in ("evil.example", "127.0.0.1.evil.example", "attacker.test:8080", "127.0.0.1:80@evil", ""):
            answer = client.post(
                "/v1/search", json={"query": "x"}, headers={"Host": host} if host else {"Host": ""}
            )
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "host_not_allowed"
        for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", "[::1]:1"):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
        assert client.get("/health", headers={"Host": "evil.example"}).status_code == 200  # probes


def test_allowed_hosts_option(embedder):
    config = ServeConfig(model_name=NAME, allowed_hosts=("api.example.com", "*.corp.test"))
    with ThreadServer(create_app(embedder, config)) as running, httpx.Client(base_url=running.url) as client:
        for host, status in [
            ("api.example.com", 200),
            ("a.corp.test:443", 200),
            ("corp.test.evil", 400),
            ("127.0.0.1", 400),
        ]:
            assert client.get("/v1/models", headers={"Host": host}).status_code == status, host


# ---------------------------------------------------------------- class 4: key files
def _serve(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lame_runtime.serve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_key_file_problems_are_one_line_naming_the_file(runtime_artifact, tmp_path, capsys):
    from lame_runtime.serve.cli import main

    writable = write_key_file(tmp_path)
    writable.chmod(0o664)
    other = tmp_path / "other.txt"
    other.write_text(KEY + "\n")
    other.chmod(0o646)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe" + KEY.encode())
    binary.chmod(0o600)
    for path, words in [
        (writable, "writable by its group"),
        (other, "writable by group and others"),
        (binary, "not UTF-8"),
    ]:
        assert main(["--model", str(runtime_artifact), "--api-key-file", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and words in err, err


# ---------------------------------------------------------------- class 10: exit codes
def test_a_busy_port_is_one_line_and_exit_2_before_any_announcement(runtime_artifact):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = _serve(["--model", str(runtime_artifact), "--port", str(port), "--log-level", "warning"])
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"lame-serve: error: cannot listen on 127.0.0.1:{port}: the port is in use (--port)"]
    assert "serving" not in done.stdout + done.stderr


def test_version(runtime_artifact):
    done = _serve(["--version"], timeout=60)
    assert done.returncode == 0 and re.match(r"lame-serve, version \d", done.stdout), done


def test_announces_only_once_listening(runtime_artifact):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lame_runtime.serve.cli",
            "--model",
            str(runtime_artifact),
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if "serving" in line:
                assert f"http://127.0.0.1:{port}" in line
                # announced: it answers at once, and is ready
                assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
                break
            assert time.monotonic() < deadline
        else:
            raise AssertionError("never announced")
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
