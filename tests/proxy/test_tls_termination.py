"""TLS termination on ``listen.https``: SNI, min version, ALPN, mTLS, redirect, reload,
handshake timeouts. Certificates are made per test by trustme."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import shutil
import ssl
from pathlib import Path

import pytest
import trustme
from pytest_aiohttp import AiohttpServer

from router.config.loader import config_notes
from tests.backends import pattern_sha256, raw_exchange, read_response, start_region
from tests.conftest import make_config
from tests.poll import eventually
from tests.tls import (
    HTTPS_LISTEN,
    CertFiles,
    StartHttps,
    ca_file,
    client_context,
    https_get,
    issue,
    new_ca,
    open_tls,
    write_leaf,
)


async def test_sni_picks_by_san_wildcards_too_and_the_first_is_the_default(
    start_https: StartHttps, ca: trustme.CA
) -> None:
    https = await start_https()
    region, service = https.region, https.service
    port, ctx = https.port, client_context(ca)
    api = await https_get(port, ctx, "api.test", host="api.test")
    assert api.names == ("api.test", "localhost")
    assert api.response.status == 200
    # What the region saw: the request came over TLS.
    assert region.seen[-1].header("X-Forwarded-Proto") == "https"
    assert region.seen[-1].header("X-Forwarded-Host") == "api.test"
    wild = await https_get(port, ctx, "a.wild.test", host="a.wild.test")
    assert wild.names == ("*.wild.test",)
    assert wild.response.status == 200
    # A wildcard covers one label only; unknown names and no SNI get the default.
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    assert (await https_get(port, unverified, "a.b.wild.test")).names == ("api.test", "localhost")
    assert (await https_get(port, unverified, "other.test")).names == ("api.test", "localhost")
    assert (await https_get(port, unverified, None)).names == ("api.test", "localhost")
    # The plain listener still says http.
    plain = await raw_exchange(
        service.proxy_port, b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert plain.status == 200
    assert region.seen[-1].header("X-Forwarded-Proto") == "http"


async def test_min_version_and_alpn_hold_on_every_sni_context(
    start_https: StartHttps, ca: trustme.CA
) -> None:
    port = (await start_https({"min_version": "1.3"})).port
    for name in ("api.test", "x.wild.test"):
        # http2 is off in this config: ALPN must not offer h2, only http/1.1.
        ok = await https_get(port, client_context(ca, alpn=["h2", "http/1.1"]), name, host=name)
        assert (ok.alpn, ok.version, ok.response.status) == ("http/1.1", "TLSv1.3", 200)
        old = client_context(ca, max_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await https_get(port, old, name, host=name)


async def test_mtls_requires_a_client_certificate_from_client_ca_on_every_context(
    start_https: StartHttps, ca: trustme.CA, tmp_path: Path
) -> None:
    client_ca = new_ca()
    client_ca_file = ca_file(client_ca, tmp_path / "client-ca.pem")
    port = (await start_https({"client_ca": str(client_ca_file)})).port
    good = client_ca.issue_cert("client.test")
    stranger = new_ca().issue_cert("client.test")
    for name in ("api.test", "x.wild.test"):
        ok = await https_get(port, client_context(ca, client_cert=good), name, host=name)
        assert ok.response.status == 200
        for ctx in (client_context(ca), client_context(ca, client_cert=stranger)):
            # TLS 1.3: the server's refusal arrives after the client's handshake ends.
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await https_get(port, ctx, name, host=name)


async def test_a_large_response_and_a_large_upload_cross_tls_intact(
    start_https: StartHttps, ca: trustme.CA
) -> None:
    """8 MiB down (more than the socket buffers: the TLS transport's write buffer and
    pause_writing carry it) and 4 MiB up, through the router."""
    https = await start_https()
    region, port = https.region, https.port
    size = 8 * 1024 * 1024
    got = await https_get(port, client_context(ca), "api.test", f"/bytes/{size}", "api.test")
    assert got.response.status == 200
    assert len(got.response.body) == size
    assert hashlib.sha256(got.response.body).hexdigest() == pattern_sha256(size)
    upload = bytes(range(256)) * (4 * 4096)
    reader, writer = await open_tls(port, client_context(ca), "api.test")
    head = f"POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: {len(upload)}\r\n\r\n"
    writer.write(head.encode() + upload)
    response = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert response.status == 200
    assert region.seen[-1].body_sha256 == hashlib.sha256(upload).hexdigest()


async def test_redirect_http_answers_308_to_https_with_host_path_and_query(
    start_https: StartHttps,
) -> None:
    https = await start_https({"redirect_http": True})
    region, service, port = https.region, https.service, https.port
    before = len(region.seen)
    r = await raw_exchange(
        service.proxy_port,
        b"POST /a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: API.test:8080\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert r.status == 308
    assert r.header("Location") == f"https://api.test:{port}/a/b%20c?x=1&y=%2F"
    v6 = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n")
    assert v6.header("Location") == f"https://[::1]:{port}/"
    missing = await raw_exchange(service.proxy_port, b"GET / HTTP/1.0\r\n\r\n")
    assert missing.status == 400
    assert len(region.seen) == before  # nothing reached a region


async def test_reload_rereads_certificates_and_a_bad_pair_keeps_the_old_ones(
    start_https: StartHttps, ca: trustme.CA, certs: tuple[CertFiles, CertFiles]
) -> None:
    api, wild = certs
    https = await start_https()
    service, port = https.service, https.port
    # A keep-alive connection opened before the reload.
    reader, writer = await open_tls(port, client_context(ca), "api.test")
    try:
        # New certificate, same files: a reload picks it up for new handshakes.
        write_leaf(ca.issue_cert("api.test", "localhost", "new.test"), api)
        result = await service.control.reload("test")
        assert result.ok, result.errors
        fresh = await https_get(port, client_context(ca), "api.test", host="api.test")
        assert fresh.names == ("api.test", "localhost", "new.test")
        assert (await https_get(port, client_context(ca), "new.test")).response.status == 200

        # A key that does not match its certificate: a reload error, the old ones serve.
        api.key.write_bytes(ca.issue_cert("api.test").private_key_pem.bytes())
        bad = await service.control.reload("test")
        assert not bad.ok
        assert any("certificates[0]" in str(e) for e in bad.errors), bad.errors
        again = await https_get(port, client_context(ca), "api.test", host="api.test")
        assert again.names == ("api.test", "localhost", "new.test")
        assert (await https_get(port, client_context(ca), "x.wild.test")).names == ("*.wild.test",)
        # The connection opened before both reloads still serves.
        writer.write(b"GET /kept HTTP/1.1\r\nHost: api.test\r\n\r\n")
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    assert wild.cert.exists()


async def test_stalled_handshakes_never_block_other_clients_and_time_out(
    start_https: StartHttps, ca: trustme.CA
) -> None:
    port = (await start_https({"handshake_timeout": "500ms"})).port
    # A ClientHello cut short, plain HTTP, and silence: 20 of each.
    hello = _client_hello()
    stalls = [hello[: len(hello) // 2], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""]
    opened = []
    for i in range(60):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(stalls[i % 3])
        opened.append((reader, writer))
    try:
        # Meanwhile a real client is served at once.
        started = asyncio.get_running_loop().time()
        ok = await https_get(port, client_context(ca), "api.test", host="api.test")
        assert ok.response.status == 200
        assert asyncio.get_running_loop().time() - started < 0.4
        # Every stalled connection is closed once the handshake timeout passes.
        for reader, _ in opened:
            async with asyncio.timeout(5):
                while await _read_or_reset(reader):
                    pass
    finally:
        for _, writer in opened:
            writer.close()


async def test_plain_http_on_the_https_port_gets_a_400_in_clear_text(
    start_https: StartHttps, ca: trustme.CA
) -> None:
    https = await start_https({"handshake_timeout": "5s"})
    region, port = https.region, https.port
    sends = [
        [b"GET /a?b=1 HTTP/1.1\r\nHost: api.test\r\n\r\n"],
        [b"G", b"ET / HTTP/1.1\r\nHost: api.test\r", b"\n\r\n"],  # the head in pieces
        [b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 65536\r\n\r\n"]
        + [b"x" * 8192] * 8,  # a body after the head: the 400 must not be lost to a reset
    ]
    for pieces in sends:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
            response = await read_response(reader, timeout_s=5)
            assert response.status == 400
            assert response.header("x-router-error") == "plain_http_on_https"
            assert b"The plain HTTP request was sent to HTTPS port" in response.body
            assert response.header("connection") == "close"
            # Then the router closes its side; the body it never read does not matter.
            async with asyncio.timeout(5):
                while await _read_or_reset(reader):
                    pass
        finally:
            writer.close()
    # Nothing reached the region, and TLS on the same port is unaffected.
    assert not region.seen
    ok = await https_get(port, client_context(ca), "api.test", host="api.test")
    assert ok.response.status == 200


async def _read_or_reset(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(65536)
    except ConnectionError:
        return b""


def _client_hello() -> bytes:
    """The first flight of a real TLS client (a memory BIO handshake that never completes)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="api.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("openssl")),
    reason="needs the curl and openssl command-line tools (.ci/run installs them)",
)
async def test_curl_and_openssl_s_client_speak_to_it(
    start_https: StartHttps, ca: trustme.CA, tmp_path: Path
) -> None:
    port = (await start_https()).port
    trusted = ca_file(ca, tmp_path / "ca.pem")
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--cacert",
        str(trusted),
        "--resolve",
        f"x.wild.test:{port}:127.0.0.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version} %{ssl_verify_result}",
        f"https://x.wild.test:{port}/echo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(curl.communicate(), 20)
    assert out.decode() == "200 1.1 0", err.decode()
    s_client = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        "api.test",
        "-CAfile",
        str(trusted),
        "-verify_return_error",
        "-alpn",
        "h2,http/1.1",
        "-quiet",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    request = b"GET /sc HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
    out, err = await asyncio.wait_for(s_client.communicate(request), 20)
    assert out.startswith(b"HTTP/1.1 200"), (out[:200], err.decode())
    assert b"verify return:1" in err or b"depth=0" in err, err.decode()


async def test_check_reports_a_mismatched_pair_and_a_missing_tls_section(
    tmp_path: Path, ca: trustme.CA, certs: tuple[CertFiles, CertFiles]
) -> None:
    api, wild = certs
    listen = dict(HTTPS_LISTEN)
    mixed = {"cert": str(api.cert), "key": str(wild.key)}
    with pytest.raises(Exception) as bad:
        make_config(listen=listen, tls={"certificates": [mixed]})
    assert "tls.certificates[0]" in str(bad.value)
    assert "KEY_VALUES_MISMATCH" in str(bad.value) or "mismatch" in str(bad.value).lower()
    with pytest.raises(Exception) as missing:
        make_config(listen=listen)
    assert "tls: required when listen.https is set" in str(missing.value)
    ok = make_config(listen=listen, tls={"certificates": [api.config()], "min_version": 1.3})
    assert ok.tls is not None and ok.tls.min_version == "1.3"
    assert ok.tls.certificates[0].names == ("api.test", "localhost")
    assert not [n for n in config_notes(ok) if "tls" in n]
    # A certificate about to expire is worth a warning at start-up, reload and `check`.
    soon = CertFiles(api.cert.with_name("soon.pem"), api.key.with_name("soon.key"))
    in_3_days = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    write_leaf(ca.issue_cert("soon.test", not_after=in_3_days), soon)
    expiring = make_config(listen=listen, tls={"certificates": [api.config(), soon.config()]})
    notes = [n for n in config_notes(expiring) if n.startswith("tls.")]
    assert (
        len(notes) == 1
        and "tls.certificates[1]" in notes[0]
        and "expires in 3.0 day(s)" in notes[0]
    )


async def test_workers_all_serve_tls_and_a_reload_reaches_every_one(
    tmp_path: Path, aiohttp_server: AiohttpServer, ca: trustme.CA
) -> None:
    from tests.backends import free_ports, router_process

    region = await start_region(aiohttp_server)
    api = issue(ca, tmp_path, "api", "api.test")
    proxy, admin, https = free_ports(3)
    config = {
        "listen": {
            "proxy": f"127.0.0.1:{proxy}",
            "admin": f"127.0.0.1:{admin}",
            "https": f"127.0.0.1:{https}",
        },
        "regions": [region.config()],
        "health_check": {"interval": "200ms", "timeout": "150ms"},
        "tls": {"certificates": [api.config()]},
    }
    async with router_process(tmp_path, config, workers=2) as router:
        # Each worker listens on its own SO_REUSEPORT socket (the supervisor's only
        # reserves the port): two TLS listeners.
        assert _listeners(https) == 2
        ok = await https_get(https, client_context(ca), "api.test", host="api.test")
        assert ok.response.status == 200
        write_leaf(ca.issue_cert("api.test", "reloaded.test"), api)
        router.process.send_signal(1)  # SIGHUP

        async def every_new_handshake_sees_the_new_cert() -> bool:
            names = [
                (await https_get(https, client_context(ca), "api.test", host="api.test")).names
                for _ in range(12)
            ]
            return all(n == ("api.test", "reloaded.test") for n in names)

        await eventually(every_new_handshake_sees_the_new_cert, 20, "every worker reloaded")


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (from /proc/net/tcp; state 0A is LISTEN)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = f"0100007F:{port:04X}"
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "0A")


async def test_a_new_client_ca_on_reload_refuses_the_old_one_for_every_name(
    start_https: StartHttps, ca: trustme.CA, tmp_path: Path
) -> None:
    first_ca, second_ca = new_ca(), new_ca()
    client_ca_file = ca_file(first_ca, tmp_path / "client-ca.pem")
    https = await start_https({"client_ca": str(client_ca_file)})
    service, port, path = https.service, https.port, https.config_path
    old_client, new_client = first_ca.issue_cert("c.test"), second_ca.issue_cert("c.test")
    ok = await https_get(port, client_context(ca, client_cert=old_client), "api.test")
    assert ok.response.status == 200
    # Another CA in the same file: a CA store only grows, so the router must not keep
    # trusting the first one on the default certificate's context.
    ca_file(second_ca, client_ca_file)
    result = await service.control.reload("test")
    assert result.ok, result.errors
    for name in ("api.test", "x.wild.test", None):
        ctx = client_context(ca, client_cert=new_client)
        if name is None:
            ctx.check_hostname = False
        assert (await https_get(port, ctx, name, host="api.test")).response.status == 200
        stale = client_context(ca, client_cert=old_client)
        if name is None:
            stale.check_hostname = False
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await https_get(port, stale, name, host="api.test")
    assert path.exists()


async def test_renewed_certificate_files_are_picked_up_by_the_watch(
    start_https: StartHttps, ca: trustme.CA, certs: tuple[CertFiles, CertFiles]
) -> None:
    api, _ = certs
    https = await start_https(reload={"watch": True, "debounce": "100ms"})
    service, port = https.service, https.port
    # A renewal rewrites the files in place; config.yaml does not change.
    write_leaf(ca.issue_cert("api.test", "localhost", "renewed.test"), api)

    async def renewed() -> bool:
        got = await https_get(port, client_context(ca), "api.test", host="api.test")
        return got.names == ("api.test", "localhost", "renewed.test")

    await eventually(renewed, 5, "the renewed certificate serves without a reload signal")
    reloads = service.runtime.config_reloads
    errors_before = reloads.labels("error")._value.get()  # the counter's value
    # A key that does not match: one failed reload, not one per watch turn.
    api.key.write_bytes(ca.issue_cert("api.test").private_key_pem.bytes())

    async def rejected() -> bool:
        return bool(reloads.labels("error")._value.get() > errors_before)

    await eventually(rejected, 5, "the bad pair is a reload error")
    await asyncio.sleep(1.0)  # several watch turns
    assert reloads.labels("error")._value.get() == errors_before + 1
    assert (await renewed()) is True  # the last good certificate keeps serving
