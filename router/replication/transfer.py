"""The HTTP legs of replication: source -> spool file, spool -> PUT, copy -> read-back hash.

Memory stays bounded by ``CHUNK_BYTES`` whatever the artifact's size: bytes go from a
socket to the spool file and from the spool file to a socket one chunk at a time. File I/O
and hashing run in the default executor (hashlib releases the GIL), so a multi-GB copy
never stalls the proxy sharing this event loop. aiohttp and socket errors are translated
once, in ``transfer_errors``, into ``TransferError`` (retryable or not).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from router.errors import RouterError

CHUNK_BYTES = 256 * 1024
BODY_PEEK_BYTES = 64 * 1024  # how much of a PUT/HEAD answer we read looking for a digest
_HEX64 = frozenset("0123456789abcdef")

Progress = Callable[[int], None]


class TransferError(RouterError):
    """A network or HTTP failure of one request; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool = True, status: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class SpoolError(RouterError):
    """The local spool file could not be written or read (disk full, permissions)."""


@contextlib.contextmanager
def transfer_errors(what: str) -> Iterator[None]:
    """Map aiohttp/socket errors of ``what`` (e.g. ``"PUT http://..."``) to TransferError."""
    try:
        yield
    except TimeoutError:
        raise TransferError(f"{what}: timed out") from None
    except aiohttp.ClientPayloadError as exc:
        raise TransferError(f"{what}: body cut short ({exc})") from None
    except aiohttp.ClientError as exc:
        raise TransferError(f"{what}: {type(exc).__name__}: {exc}") from None
    except ConnectionError as exc:
        raise TransferError(f"{what}: {exc.strerror or type(exc).__name__}") from None


def status_error(what: str, status: int, reason: str | None) -> TransferError:
    retryable = status >= 500 or status in (408, 425, 429)
    return TransferError(
        f"{what}: answered {status} {reason or ''}".rstrip(), retryable=retryable, status=status
    )


# -- what a server says about a stored copy ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """Digest and size a server reported for a representation (any may be missing)."""

    sha256: str | None = None  # from Digest, Repr-Digest, X-Checksum-Sha256 or a JSON body
    etag: str | None = None  # the ETag when it looks like a hex sha256 (only trusted if equal)
    size: int | None = None  # from a JSON body's size/bytes, or Content-Length of a HEAD


def _hex(value: str) -> str | None:
    value = value.strip().lower()
    return value if len(value) == 64 and set(value) <= _HEX64 else None


def _b64_hex(value: str) -> str | None:
    try:
        raw = base64.b64decode(value.strip().strip(":"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def digest_header_sha256(headers: Mapping[str, str]) -> str | None:
    """sha256 (hex) from ``Repr-Digest``/``Digest`` (RFC 9530/3230) or ``X-Checksum-Sha256``."""
    for name in ("Repr-Digest", "Digest"):
        value = headers.get(name)
        if not value:
            continue
        for item in value.split(","):
            algo, _, encoded = item.strip().partition("=")
            if algo.strip().lower() in ("sha-256", "sha256"):
                found = _b64_hex(encoded) or _hex(encoded)
                if found:
                    return found
    checksum = headers.get("X-Checksum-Sha256")
    return _hex(checksum) if checksum else None


def etag_sha256(headers: Mapping[str, str]) -> str | None:
    etag = headers.get("ETag")
    if not etag:
        return None
    etag = etag.strip().removeprefix("W/").strip('"')
    return _hex(etag.removeprefix("sha256:").removeprefix("sha-256:"))


def body_report(body: bytes) -> tuple[str | None, int | None]:
    """(sha256, size) from a JSON answer like ``{"sha256": "...", "size": 123}``."""
    try:
        data = orjson.loads(body) if body.strip().startswith(b"{") else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    sha: str | None = None
    for key in ("sha256", "digest", "checksum"):
        value = data.get(key)
        if isinstance(value, str):
            text = value.removeprefix("sha256:").removeprefix("sha-256=")
            sha = _hex(text) or _b64_hex(text)
            if sha:
                break
    size: int | None = None
    for key in ("size", "bytes", "size_bytes", "length"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            size = value
            break
    return sha, size


def report_from(headers: Mapping[str, str], body: bytes = b"", *, head: bool = False) -> Report:
    sha, size = body_report(body) if body else (None, None)
    if size is None and head and headers.get("Content-Length", "").isdigit():
        size = int(headers["Content-Length"])
    return Report(sha256=digest_header_sha256(headers) or sha, etag=etag_sha256(headers), size=size)


def digest_headers(sha256: str) -> dict[str, str]:
    """Headers that let a capable target check the body it receives."""
    b64 = base64.b64encode(bytes.fromhex(sha256)).decode()
    return {
        "Digest": f"sha-256={b64}",
        "Repr-Digest": f"sha-256=:{b64}:",
        "X-Checksum-Sha256": sha256,
    }


# -- files -------------------------------------------------------------------------------


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class SpoolWriter:
    """Writes and hashes a stream into ``path``; ``finish`` fsyncs and returns the digest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<SpoolWriter {self.path.name} {self.size} bytes>"

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Opened inline, not in a thread: a cancel then cannot lose the file object.
            self._file = open(self.path, "wb")  # noqa: ASYNC230, SIM115  # closed by finish/abort
        except OSError as exc:
            raise SpoolError(f"cannot create spool file {self.path}: {exc.strerror}") from None

    def _write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._hash.update(chunk)
        self._file.write(chunk)

    async def write(self, chunk: bytes) -> None:
        try:
            await _in_thread(self._write, chunk)
        except OSError as exc:
            raise SpoolError(f"cannot write spool file {self.path}: {exc.strerror}") from None
        self.size += len(chunk)

    def _close(self, sync: bool) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                f.close()

    async def finish(self) -> str:
        try:
            await _in_thread(self._close, True)
        except OSError as exc:
            raise SpoolError(f"cannot write spool file {self.path}: {exc.strerror}") from None
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Close and delete the partial file (sync: safe in ``finally`` and on cancel)."""
        with contextlib.suppress(OSError):
            self._close(False)
        with contextlib.suppress(OSError):
            self.path.unlink()


class SpoolBody:
    """A PUT body read from the spool file chunk by chunk; counts bytes handed to the socket.

    An explicit iterator object (not an async generator) so ``close`` is deterministic when
    a request is cancelled half-way.
    """

    def __init__(self, path: Path, progress: Progress) -> None:
        self.path = path
        self.progress = progress
        self._file: IO[bytes] | None = None
        self._done = False

    def __aiter__(self) -> SpoolBody:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._file is None:
                self._file = open(self.path, "rb")  # noqa: ASYNC230, SIM115  # as SpoolWriter.open
            chunk: bytes = await _in_thread(self._file.read, CHUNK_BYTES)
        except OSError as exc:
            self.close()
            raise SpoolError(f"cannot read spool file {self.path}: {exc.strerror}") from None
        if not chunk:
            self.close()
            raise StopAsyncIteration
        self.progress(len(chunk))
        return chunk

    def close(self) -> None:
        self._done = True
        f, self._file = self._file, None
        if f is not None:
            f.close()


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


async def hash_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a local file, hashed in a worker thread."""
    result: tuple[str, int] = await _in_thread(_hash_file, path)
    return result


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRead:
    sha256: str
    size: int
    validators: dict[str, str]  # ETag / Last-Modified / Content-Length as sent with the body
    declared: str | None  # a digest the source declared for the body, if any


VALIDATORS = ("ETag", "Last-Modified", "Content-Length")


async def read_to_spool(
    session: aiohttp.ClientSession,
    url: str,
    spool: SpoolWriter,
    progress: Progress,
    *,
    headers: Mapping[str, str],
    ssl: Any,
    before_body: Callable[[int | None], None] | None = None,
) -> SourceRead:
    """GET ``url`` into ``spool`` (hashing as it goes); the caller owns ``spool.abort``."""
    async with _get_as_stored(session, url, headers, ssl) as resp:
        validators = {k: resp.headers[k] for k in VALIDATORS if k in resp.headers}
        if before_body is not None:
            before_body(resp.content_length)
        await spool.open()
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            await spool.write(chunk)
            progress(len(chunk))
        declared = digest_header_sha256(resp.headers)  # an ETag is only a validator here
    sha = await spool.finish()
    return SourceRead(sha256=sha, size=spool.size, validators=validators, declared=declared)


async def head(
    session: aiohttp.ClientSession, url: str, *, headers: Mapping[str, str], ssl: Any
) -> tuple[int, Mapping[str, str]]:
    with transfer_errors(f"HEAD {url}"):
        async with session.head(url, headers=headers, ssl=ssl, allow_redirects=False) as resp:
            return resp.status, resp.headers


async def put_file(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    size: int,
    sha256: str,
    progress: Progress,
    *,
    headers: Mapping[str, str],
    ssl: Any,
) -> Report:
    """PUT the spool to ``url``; a non-2xx answer raises; returns what the target reported."""
    what = f"PUT {url}"
    body = SpoolBody(path, progress)
    put_headers = {
        **headers,
        **digest_headers(sha256),
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
    }
    try:
        with transfer_errors(what):
            async with session.put(
                url, data=body, headers=put_headers, ssl=ssl, allow_redirects=False
            ) as resp:
                answer = await resp.content.read(BODY_PEEK_BYTES)
                if not 200 <= resp.status < 300:
                    raise status_error(what, resp.status, resp.reason)
                return report_from(resp.headers, answer)
    finally:
        body.close()


async def hash_url(
    session: aiohttp.ClientSession, url: str, *, headers: Mapping[str, str], ssl: Any
) -> tuple[str, int]:
    """(sha256, size) of what ``GET url`` returns, streamed (the read-back of a copy)."""
    h = hashlib.sha256()
    size = 0
    async with _get_as_stored(session, url, headers, ssl) as resp:
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            await _in_thread(h.update, chunk)
            size += len(chunk)
    return h.hexdigest(), size


@contextlib.asynccontextmanager
async def _get_as_stored(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], ssl: Any
) -> AsyncIterator[aiohttp.ClientResponse]:
    """``GET url`` for the bytes as stored (no content coding); TransferError unless 200,
    and for any transfer failure while the caller reads the body."""
    what = f"GET {url}"
    with transfer_errors(what):
        async with session.get(
            url, headers={**headers, "Accept-Encoding": "identity"}, ssl=ssl
        ) as resp:
            if resp.status != 200:
                raise status_error(what, resp.status, resp.reason)
            yield resp
