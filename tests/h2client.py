"""A small HTTP/2 client over a raw socket for tests (the h2 library's client side).

``H2Client`` opens one connection (h2c with prior knowledge, or TLS with ALPN h2), sends
requests on streams of it and collects each stream's response: status, headers, body,
trailers, or the RST_STREAM code. ``frames`` builds raw frames for protocol-error tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class H2Response:
    stream_id: int
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class H2Client:
    """One HTTP/2 connection; ``request`` may be called concurrently (one stream each)."""

    def __init__(self, *, window: int = 16 * 1024 * 1024, auto_ack: bool = True) -> None:
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(cfg)
        self.window = window
        self.auto_ack = auto_ack  # False: the stream windows are never re-opened
        self.stalled: set[int] = set()  # streams whose window is not re-opened (yet)
        self.unacked: dict[int, int] = {}
        self.responses: dict[int, H2Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.error: Exception | None = None  # why reading stopped, if not a clean close
        self.closed = asyncio.Event()
        self.settings_acked = asyncio.Event()
        self.remote_settings: dict[int, int] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int, *, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: min(self.window, 2**31 - 1)
            },
        )
        self.conn.initiate_connection()
        if self.window > 65535:
            self.conn.increment_flow_control_window(self.window - 65535)
        self.flush()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @property
    def alpn(self) -> str | None:
        """The protocol ALPN chose on a TLS connection (None: h2c, or no ALPN)."""
        assert self._writer is not None
        sslobj = self._writer.get_extra_info("ssl_object")
        return None if sslobj is None else sslobj.selected_alpn_protocol()

    def flush(self) -> None:
        assert self._writer is not None
        data = self.conn.data_to_send()
        if data:
            self._writer.write(data)

    def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.flush()
        except (ConnectionError, h2.exceptions.ProtocolError) as exc:
            self.error = exc
        finally:
            self.closed.set()
            for resp in self.responses.values():
                resp.done.set()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            resp = self.responses[event.stream_id]
            for k, v in event.headers:
                key, value = str(k), str(v)
                if key == ":status":
                    resp.status = int(value)
                else:
                    resp.headers.append((key, value))
        elif isinstance(event, h2.events.DataReceived):
            resp = self.responses[event.stream_id]
            resp.body += event.data
            size = event.flow_controlled_length
            if event.stream_id in self.stalled or not self.auto_ack:
                # the connection window is re-opened, the stream's is not: it stalls alone
                self.unacked[event.stream_id] = self.unacked.get(event.stream_id, 0) + size
                if size:
                    self.conn.increment_flow_control_window(size)
            elif size:
                self.conn.acknowledge_received_data(size, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[event.stream_id].trailers = [(str(k), str(v)) for k, v in event.headers]
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].done.set()
        elif isinstance(event, h2.events.StreamReset):
            resp = self.responses[event.stream_id]
            resp.reset_code = int(event.error_code)
            resp.done.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            if event.error_code == 0:
                # h2's client state machine closes on any GOAWAY; a graceful one (NO_ERROR)
                # still lets the streams below last_stream_id finish (RFC 9113 6.8).
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings = {int(k): v.new_value for k, v in event.changed_settings.items()}
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acked.set()

    def start(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        authority: str = "example.com",
        end: bool = True,
    ) -> H2Response:
        sid = self.conn.get_next_available_stream_id()
        resp = H2Response(sid)
        self.responses[sid] = resp
        fields = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
        ]
        fields += headers or []
        self.conn.send_headers(sid, fields, end_stream=body is None and end)
        if body is not None:
            size = self.conn.max_outbound_frame_size
            chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
            for i, chunk in enumerate(chunks):
                self.conn.send_data(sid, chunk, end_stream=end and i == len(chunks) - 1)
        self.flush()
        return resp

    async def request(self, path: str, timeout_s: float = 10.0, **kwargs: object) -> H2Response:
        resp = self.start(path, **kwargs)  # type: ignore[arg-type]
        await asyncio.wait_for(resp.done.wait(), timeout_s)
        return resp

    def unstall(self, stream_id: int) -> None:
        """Re-open a stalled stream's window (and keep it open)."""
        self.stalled.discard(stream_id)
        size = self.unacked.pop(stream_id, 0)
        if size:
            self.conn.increment_flow_control_window(size, stream_id=stream_id)
        self.flush()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, 0x8)  # CANCEL
        self.flush()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
