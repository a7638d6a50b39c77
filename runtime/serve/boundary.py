"""Where a request enters the service: the Host check and the body's bytes -> a checked dict.

Everything a client sends passes here before any handler sees it, so each class of bad input
is refused once, with one 400 naming it, instead of failing later deep inside a library (an
encoder, the file system, the index's save):

* the body is decoded as strict UTF-8 and parsed by the project's one JSON reader
  (``lame_runtime.persist.parse_json``: nesting too deep, huge integers and repeated keys are
  named, never a ``RecursionError``);
* every string in it, object keys included, at any depth, must be encodable as UTF-8: a JSON
  escape such as ``"\\ud800"`` decodes to a lone surrogate that no file, index or response
  can hold (``check_strings``);
* the ``Host`` header must be one this server answers to (``HostCheck``): a page that
  rebinds its own name to 127.0.0.1 sends its own name, and is refused.
"""

from __future__ import annotations

from typing import Any

from lame_runtime.persist import parse_json
from lame_runtime.serve.errors import BadRequest


class InvalidJSON(BadRequest):
    code = "invalid_json"


def read_body(raw: bytes) -> dict[str, Any]:
    """Request bytes -> a JSON object whose every string can be stored and returned."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidJSON(
            f"request body is not valid JSON: it is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None
    body = parse_json(text, "request body", InvalidJSON)
    if not isinstance(body, dict):
        raise InvalidJSON(f"request body must be a JSON object, got {json_kind(body)}")
    check_strings(body)
    return body


def check_strings(value: Any, where: str = "") -> None:
    """Raise ``BadRequest`` naming the first string (or key) that is not valid Unicode.

    Walks iteratively: the parser already bounds the depth, and this must not add a
    recursion limit of its own."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            _check_text(item, at or "the body")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, f"a key of {at or 'the body'}")
                stack.append((child, f"{at}.{key}" if at else key))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]") for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # ``where`` may itself hold the bad key: the message shows it escaped, never raw.
        raise BadRequest(
            f"{ascii(where)[1:-1]} is not valid Unicode: lone surrogate "
            f"U+{ord(text[err.start]):04X} at character {err.start} (send UTF-8 text; "
            "a JSON \\uD800-\\uDFFF escape must be one half of a pair)",
            code="invalid_input",
        ) from None


def json_kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


class HostCheck:
    """The ``Host`` header against an allow-list, as web frameworks' trusted-host middleware
    does: exact names, ``*.example.com`` for a domain's subdomains, ``*`` for any. The port is
    ignored (the socket already chose it); an IPv6 literal is written without brackets."""

    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = tuple(name.lower().strip("[]") for name in allowed)
        self.any = "*" in self.allowed

    def ok(self, header: str | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        host = host_name(header)
        if not host:
            return False
        for name in self.allowed:
            if host == name or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False


def host_name(header: str) -> str:
    """``Host`` header -> the bare lower-case name (``[::1]:8080`` -> ``::1``); "" when it is
    not a name with an optional numeric port (``127.0.0.1:80@evil`` names nothing)."""
    header = header.strip().lower()
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif header.count(":") > 1:  # a bare IPv6 literal (no port can follow it)
        name, port = header, ""
    else:
        name, _, port = header.partition(":")
    if (port and not port.isdigit()) or any(c in name for c in "@/?#\\ "):
        return ""
    return name
