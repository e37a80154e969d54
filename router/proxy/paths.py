"""Request-target handling: origin/absolute form, dot-segment normalisation for matching."""

from __future__ import annotations

from typing import Final

from router.errors import BadRequest

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Byte values, not one-byte strings: ``b"." in path`` first tries the operand as an integer,
# and building that TypeError cost ~0.2 us per test compiled (perf, issue 12); an int is
# a memchr.
DOT: Final = 0x2E  # "."
PERCENT: Final = 0x25  # "%"


def needs_normalizing(target: bytes) -> bool:
    """Whether ``target`` has a dot segment or an escape to look at (most have neither)."""
    return DOT in target or PERCENT in target


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """Return (origin-form target, authority or None) for a raw request target.

    Absolute-form (``http://host/path``) yields its path and the authority it names; the
    caller refuses authorities other than the request's own Host (no open proxy).
    """
    if target.startswith(b"/") or target == b"*":
        return target, None
    lower = target[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        rest = target.split(b"://", 1)[1]
        cut = len(rest)
        for sep in (b"/", b"?"):
            i = rest.find(sep)
            if i != -1 and i < cut:
                cut = i
        authority, path = rest[:cut], rest[cut:]
        if b"@" in authority or not authority:
            raise BadRequest("invalid absolute-form request target")
        if not path.startswith(b"/"):
            path = b"/" + path
        return path, authority.lower()
    raise BadRequest("invalid request target")


def normalize_path(target: bytes) -> str:
    """The path used for route matching: unreserved escapes decoded, dot segments removed.

    Raises BadRequest when dot segments climb above the root.
    """
    query = target.find(b"?")
    path = target if query < 0 else target[:query]
    if PERCENT in path:
        path = _decode_unreserved(path)
    if DOT not in path:
        return path.decode("latin-1")
    out: list[bytes] = []
    segments = path.split(b"/")
    for seg in segments[1:]:
        if seg == b".":
            continue
        if seg == b"..":
            if not out:
                raise BadRequest("path climbs above the root")
            out.pop()
            continue
        out.append(seg)
    trailing = segments[-1] in (b".", b"..")
    result = b"/" + b"/".join(out) + (b"/" if trailing and out else b"")
    return result.decode("latin-1")


def _decode_unreserved(path: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25 and _is_hex(path, i):
            value = int(path[i + 1 : i + 3], 16)
            if value in _UNRESERVED:
                out.append(value)
                i += 3
                continue
        out.append(c)
        i += 1
    return bytes(out)


def _is_hex(path: bytes, i: int) -> bool:
    return i + 2 < len(path) and path[i + 1] in _HEX and path[i + 2] in _HEX
