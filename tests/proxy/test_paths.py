"""Request targets: origin and absolute form, and the normalised path used for route matching."""

from __future__ import annotations

import pytest

from router.errors import BadRequest
from router.proxy.paths import needs_normalizing, normalize_path, split_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a?b", (b"/a?b", None)),
        (b"*", (b"*", None)),
        (b"http://Example.COM:8080/x?y", (b"/x?y", b"example.com:8080")),
        (b"HTTPS://h", (b"/", b"h")),
        (b"http://h?q=1", (b"/?q=1", b"h")),
    ],
)
def test_split_target(target: bytes, expected: tuple[bytes, bytes | None]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize("target", [b"http://user@h/x", b"http:///x", b"ftp://h/x", b"x/y"])
def test_split_target_refuses(target: bytes) -> None:
    with pytest.raises(BadRequest):
        split_target(target)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/plain", "/plain"),
        (b"/a/./b/../c?x=../..", "/a/c"),
        (b"/public/../admin", "/admin"),
        (b"/a/b/..", "/a/"),
        (b"/a/.", "/a/"),
        (b"/%7Euser/%41", "/~user/A"),  # unreserved escapes decoded
        (b"/a%2Fb/%2e%2e/c", "/c"),  # %2F stays encoded: one segment, removed by ..
        (b"/a%2fb", "/a%2fb"),
        (b"/%zz/%4", "/%zz/%4"),  # broken escapes are left alone
        (b"/", "/"),
    ],
)
def test_normalize_path(target: bytes, expected: str) -> None:
    assert normalize_path(target) == expected


@pytest.mark.parametrize("target", [b"/..", b"/../x", b"/a/../../x", b"/%2e%2e/x", b"/.%2E/x"])
def test_normalize_path_refuses_climbing_above_root(target: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(target)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/api/items?id=1", False),
        (b"/a/./b", True),
        (b"/a%2Fb", True),
        (b"/a?x=1.5", True),  # a dot in the query: normalize_path looks, finds nothing to do
        (b"", False),
    ],
)
def test_needs_normalizing_finds_dots_and_escapes(target: bytes, expected: bool) -> None:
    assert needs_normalizing(target) is expected
    if not expected and target:
        assert normalize_path(target) == target.split(b"?", 1)[0].decode("latin-1")


def test_the_query_is_cut_before_normalizing() -> None:
    assert normalize_path(b"/a/../b?c=/../..") == "/b"
    assert normalize_path(b"/a%2e%2E/b?") == "/a../b"
