"""Every failure a request can meet -> one HTTP status and one JSON body, in one table.

The body has OpenAI's shape, so its clients raise their usual exceptions::

    {"error": {"message": "input[2]: remote image URLs are refused ...",
               "type": "invalid_request_error", "code": "remote_url_refused"}}

``lame_runtime.errors`` classes map through ``STATUS`` (most specific class first); the
service's own conditions (401, 413, 503, ...) are ``HTTPError`` subclasses carrying their
status. Anything else is a bug: 500 with its type name only, never a traceback (the
traceback goes to the server log); so are the 5xx failures of the server's own files and
stores, whose messages name server paths.
"""

from __future__ import annotations

from typing import Any

from lame_runtime.errors import (
    ArtifactError,
    BackendError,
    BusyError,
    IndexFileError,
    InputError,
    InputTypeError,
    IntegrityError,
    LameError,
    MissingFileError,
    StoreError,
)


class HTTPError(LameError):
    """A condition of the service itself (auth, limits, overload); ``status`` is its answer."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(HTTPError, InputError):
    """A request the service cannot parse or refuses by policy (remote URL, a limit)."""


class Unauthorized(HTTPError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(HTTPError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(HTTPError):
    status, type, code = 404, "not_found_error", "not_found"


class PayloadTooLarge(HTTPError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class Overloaded(HTTPError):
    """The bounded queue is full: answer now (with Retry-After) instead of growing memory."""

    status, type, code = 503, "overloaded_error", "queue_full"


class ShuttingDown(HTTPError):
    status, type, code = 503, "overloaded_error", "shutting_down"


class SaveFailing(HTTPError):
    """The index cannot be saved: a write acknowledged now might not survive a restart."""

    status, type, code = 503, "api_error", "index_save_failing"


class Timeout(HTTPError):
    status, type, code = 504, "timeout_error", "timeout"


# lame_runtime.errors class -> (status, type, code); the first matching row wins, so the
# subclasses come before their bases (StoreError is a BackendError, ...).
STATUS: list[tuple[type[BaseException], int, str, str]] = [
    (IntegrityError, 403, "permission_error", "path_not_allowed"),
    (MissingFileError, 400, "invalid_request_error", "file_not_found"),
    (InputTypeError, 400, "invalid_request_error", "invalid_type"),
    (InputError, 400, "invalid_request_error", "invalid_input"),
    (BusyError, 409, "conflict_error", "busy"),
    (StoreError, 502, "api_error", "store_unavailable"),
    (BackendError, 500, "api_error", "backend_error"),
    (IndexFileError, 500, "api_error", "index_error"),
    (ArtifactError, 500, "api_error", "artifact_error"),
    (KeyError, 404, "not_found_error", "unknown_id"),
    # What only a client's input can cause here (the request boundary names them first; these
    # rows keep any that slip past a 400, never a 500 that closes keep-alive connections).
    (UnicodeError, 400, "invalid_request_error", "invalid_input"),
    (RecursionError, 400, "invalid_request_error", "invalid_input"),
    (LameError, 500, "api_error", "error"),
]


def describe(err: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """-> (status, body, headers) for ``err``; the body names the problem, on one line.

    A client's mistake (4xx) is named in full; a server-side failure (5xx that is not one of
    the service's own answers) is named by its kind only: its message may carry server paths
    or a store's address, which the server log keeps."""
    if isinstance(err, HTTPError):
        status, kind, code, headers = err.status, err.type, err.code, err.headers
        message = str(err)
    else:
        for cls, status, kind, code in STATUS:  # noqa: B007 (the match is read after the loop)
            if isinstance(err, cls):
                break
        else:
            status, kind, code = 500, "api_error", "internal_error"
        headers = {}
        if status >= 500:
            message = f"internal error ({type(err).__name__}); the server log has the details"
        elif isinstance(err, KeyError) and err.args:
            message = str(err.args[0])
        else:
            message = str(err)
    return status, error_body(message, kind, code), headers


def error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    return {
        "error": {
            "message": " ".join(message.split()) or "(no message)",
            "type": kind,
            "code": code,
            "param": None,
        }
    }
