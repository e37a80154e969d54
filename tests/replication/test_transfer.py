"""What replication reads from a server's answer: digests, ETags, sizes; racy timestamps."""

from __future__ import annotations

import base64
import hashlib
from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from router.replication.copier import _judge, _racy
from router.replication.transfer import Report, TransferError, digest_headers, report_from

BODY = b"model bytes"
HEX = hashlib.sha256(BODY).hexdigest()
B64 = base64.b64encode(hashlib.sha256(BODY).digest()).decode()


@pytest.mark.parametrize(
    "headers",
    [
        {"Digest": f"sha-256={B64}"},
        {"Digest": f"MD5=abc, SHA-256={B64}"},
        {"Repr-Digest": f"sha-256=:{B64}:"},
        {"X-Checksum-Sha256": HEX.upper()},
        {"Digest": f"sha256={HEX}"},
    ],
)
def test_digest_headers_are_read(headers: dict[str, str]) -> None:
    assert report_from(CIMultiDict(headers)).sha256 == HEX


def test_our_own_digest_headers_round_trip() -> None:
    assert report_from(CIMultiDict(digest_headers(HEX))).sha256 == HEX


def test_etag_is_only_a_candidate_and_json_bodies_count() -> None:
    report = report_from(CIMultiDict({"ETag": f'W/"{HEX}"'}))
    assert report == Report(etag=HEX)
    assert report_from(CIMultiDict({"ETag": '"6b07c98a-5"'})) == Report()
    body = f'{{"sha256": "{HEX}", "size": 11}}'.encode()
    assert report_from(CIMultiDict(), body) == Report(sha256=HEX, size=11)
    assert report_from(CIMultiDict(), b"not json") == Report()
    assert report_from(CIMultiDict({"Content-Length": "11"}), head=True) == Report(size=11)


def test_judge_proves_rejects_or_passes() -> None:
    assert _judge(Report(sha256=HEX), HEX, 11, "r") == "target-digest"
    assert _judge(Report(etag=HEX), HEX, 11, "r") == "etag"
    assert _judge(Report(etag="0" * 64), HEX, 11, "r") is None  # another ETag scheme
    assert _judge(Report(size=11), HEX, 11, "r") is None  # a size alone proves nothing
    with pytest.raises(TransferError, match="reports sha256"):
        _judge(Report(sha256="0" * 64), HEX, 11, "r")
    with pytest.raises(TransferError, match="holds 10 bytes"):
        _judge(Report(size=10), HEX, 11, "r")


def test_last_modified_close_to_the_read_is_racy() -> None:
    now = 1_800_000_000.0
    assert _racy(formatdate(now - 5, usegmt=True), now) is False
    assert _racy(formatdate(now, usegmt=True), now) is True
    assert _racy(formatdate(now - 0.5, usegmt=True), now) is True
    assert _racy("garbage", now) is True
    assert _racy(None, now) is False
