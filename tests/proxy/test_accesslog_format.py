"""The access log's batch encoder: one JSON object per line, the old encoder's fields."""

from __future__ import annotations

import orjson
import pytest

from router.proxy.accesslog import Row, format_lines


def _old_line(row: Row) -> dict[str, object]:
    """What the one-dict-per-request encoder wrote for the same values."""
    ts, rid, client, method, line, status, region, attempts, dur, aborted, error = row
    out: dict[str, object] = {
        "ts": ts,
        "request_id": rid.decode("latin-1"),
        "client": client.decode("latin-1"),
        "method": method.decode("latin-1"),
        "target": line.split(b" ", 2)[1].decode("latin-1")[:2048],
        "status": status,
        "region": region,
        "attempts": attempts,
        "duration_ms": round(dur * 1000.0, 3),
    }
    if aborted:
        out["aborted"] = True
    if error:
        out["router_error"] = error
    return out


def test_each_row_is_one_line_with_the_old_fields_even_with_hostile_bytes() -> None:
    rows: list[Row] = [
        (
            1.5,
            b"id-1",
            b"127.0.0.1",
            b"GET",
            b"GET /a?x=1 HTTP/1.1\r\n",
            200,
            "r1",
            1,
            0.0012345,
            False,
            None,
        ),
        # a target that contains the very bytes that separate two objects, quotes, a
        # backslash, a newline escape and latin-1 bytes
        (
            2.0,
            b'q"t\\\xe9',
            b"::1",
            b"POST",
            b'POST /},{"ts":1}\n\\"x\xff HTTP/1.1\r\n',
            502,
            None,
            3,
            1.0,
            True,
            "no_region",
        ),
        (
            3.25,
            b"id-3",
            b"10.0.0.1",
            b"PURGE",
            b"PURGE /" + b"p" * 3000 + b" HTTP/1.1\r\n",
            499,
            "eu",
            1,
            0.5,
            True,
            None,
        ),
    ]
    data = format_lines(rows)
    assert data.endswith(b"\n") and data.count(b"\n") == len(rows)
    lines = [orjson.loads(line) for line in data.splitlines()]
    old = [_old_line(row) for row in rows]
    # duration_ms is rounded to the microsecond either way; exact ties may round apart
    for new_line, old_line in zip(lines, old, strict=True):
        assert new_line["duration_ms"] == pytest.approx(old_line["duration_ms"], abs=0.0011)
        assert new_line | {"duration_ms": 0} == old_line | {"duration_ms": 0}
    assert list(lines[1]) == [*list(lines[0]), "aborted", "router_error"]
    assert len(lines[2]["target"]) == 2048


def test_an_empty_batch_writes_nothing() -> None:
    assert format_lines([]) == b""
