"""HPACK for the router's HTTP/2 responses: a stateless encoder (RFC 7541).

A response head is encoded without touching either side's dynamic table: ``:status`` as an
indexed static entry when there is one, every other field as a "literal without
indexing", with the name indexed from the static table when it is there (RFC 7541 6.2.2).
No Huffman coding: the bytes go out as they are. The client's decoder state is never
changed, so there is no encoder state to keep per connection, and encoding a field is a
dict lookup and two concatenations. (Request heads are decoded with jh2's compiled
decoder; see h2wire.)
"""

from __future__ import annotations

# RFC 7541 Appendix A: the static table's names, first index of each (1-based).
_STATIC_NAMES = (
    b":authority :method :method :path :path :scheme :scheme :status :status :status "
    b":status :status :status :status accept-charset accept-encoding accept-language "
    b"accept-ranges accept access-control-allow-origin age allow authorization "
    b"cache-control content-disposition content-encoding content-language content-length "
    b"content-location content-range content-type cookie date etag expect expires from host "
    b"if-match if-modified-since if-none-match if-range if-unmodified-since last-modified "
    b"link location max-forwards proxy-authenticate proxy-authorization range referer "
    b"refresh retry-after server set-cookie strict-transport-security transfer-encoding "
    b"user-agent vary via www-authenticate"
).split()
# Indexed representations of the static table's full :status entries (8-14).
_STATUS = {
    b"200": b"\x88",
    b"204": b"\x89",
    b"206": b"\x8a",
    b"304": b"\x8b",
    b"400": b"\x8c",
    b"404": b"\x8d",
    b"500": b"\x8e",
}


def integer(value: int, prefix_bits: int, first: int) -> bytes:
    """``value`` with an N-bit prefix (RFC 7541 5.1), ``first`` the flag bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """A string literal, not Huffman-coded (H = 0)."""
    n = len(data)
    if n < 127:
        return bytes((n,)) + data
    return integer(n, 7, 0) + data


def _name_prefixes() -> dict[bytes, bytes]:
    prefixes: dict[bytes, bytes] = {}
    for index, name in enumerate(_STATIC_NAMES, 1):
        if name not in prefixes:
            prefixes[name] = integer(index, 4, 0)  # literal without indexing, indexed name
    return prefixes


_NAME_PREFIX = _name_prefixes()
_NEW_NAMES: dict[bytes, bytes] = {}  # names not in the static table: their encoded form
_NEW_NAMES_MAX = 512  # a bound on what a region's odd field names can make this hold


def _prefix(name: bytes) -> bytes:
    prefix = _NAME_PREFIX.get(name)
    if prefix is None:
        prefix = _NEW_NAMES.get(name)
        if prefix is None:
            prefix = b"\x00" + _string(name)  # literal without indexing, new name
            if len(_NEW_NAMES) < _NEW_NAMES_MAX:
                _NEW_NAMES[name] = prefix
    return prefix


def encode(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A header block for ``fields`` (names lower-case, ``:status`` first if present)."""
    parts: list[bytes] = []
    for name, value in fields:
        if name == b":status":
            indexed = _STATUS.get(value)
            if indexed is not None:
                parts.append(indexed)
                continue
        n = len(value)
        if n < 127:
            parts.append(_prefix(name) + bytes((n,)) + value)
        else:
            parts.append(_prefix(name) + integer(n, 7, 0) + value)
    return b"".join(parts)
