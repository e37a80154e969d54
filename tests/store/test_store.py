"""FileStateStore: atomic documents, corrupt files set aside, newer formats refused."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from router.state.operations import FailoverOperation, OperationBook
from router.store.files import FORMAT_VERSION, FileStateStore, StateFormatError, StoreWriteError


def test_save_then_load_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "state")
    store.save("regions", {"runtime": [{"id": "r1"}]})
    store.save("regions", {"runtime": [{"id": "r2"}]})
    assert store.load("regions") == {"runtime": [{"id": "r2"}]}
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["regions.json"]
    doc = orjson.loads((tmp_path / "state" / "regions.json").read_bytes())
    assert doc["format"] == FORMAT_VERSION and doc["kind"] == "regions"
    assert store.load("history") is None
    assert repr(store).endswith("writes=2 problems=0>")


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'{"format": "1", "data": {}}', b'{"data": {}}', b"\xff\xfe"],
)
def test_an_unparseable_file_is_moved_aside_and_reported(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "operations.json").write_bytes(raw)
    store = FileStateStore(tmp_path)
    assert store.load("operations") is None
    [problem] = store.problems
    assert problem.kind == "operations" and "corrupt" in problem.message
    assert problem.moved_to is not None
    assert Path(problem.moved_to).read_bytes() == raw
    assert not (tmp_path / "operations.json").exists()


def test_a_second_corrupt_file_in_the_same_second_does_not_overwrite_the_first(
    tmp_path: Path,
) -> None:
    store = FileStateStore(tmp_path)
    for raw in (b"one", b"two"):
        (tmp_path / "history.json").write_bytes(raw)
        store.load("history")
    moved = sorted(Path(p.moved_to or "").read_bytes() for p in store.problems)
    assert moved == [b"one", b"two"]


def test_a_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    raw = orjson.dumps({"format": FORMAT_VERSION + 1, "kind": "regions", "data": 1})
    (tmp_path / "regions.json").write_bytes(raw)
    with pytest.raises(StateFormatError, match="newer region-router"):
        FileStateStore(tmp_path).load("regions")
    assert (tmp_path / "regions.json").read_bytes() == raw


def test_a_failed_write_raises_and_keeps_the_old_document(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "state")
    store.save("regions", {"v": 1})
    os.chmod(tmp_path / "state", 0o500)
    try:
        if os.access(tmp_path / "state", os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        with pytest.raises(StoreWriteError):
            store.save("regions", {"v": 2})
    finally:
        os.chmod(tmp_path / "state", 0o700)
    assert store.load("regions") == {"v": 1}


def test_a_file_in_place_of_the_directory_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(StoreWriteError, match="cannot write"):
        FileStateStore(tmp_path / "state").save("regions", {})


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".regions.json.123.tmp").write_bytes(b"half")
    (tmp_path / "regions.json.corrupt-x").write_bytes(b"kept")
    store = FileStateStore(tmp_path)
    assert store.remove_leftovers() == [str(tmp_path / ".regions.json.123.tmp")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions.json.corrupt-x"]


def test_operation_book_rejects_malformed_data_and_stays_unchanged() -> None:
    book = OperationBook()
    op = FailoverOperation(
        id="op-1",
        region="r1",
        target=None,
        reason="x",
        drain_s=0.0,
        created_at=1.0,
        expires_at=None,
    )
    book.start(op)
    malformed: list[object] = [
        [],
        {"active": {}},
        {"active": [{"id": "op-2"}]},
        {"active": [{**op.to_json(), "drain_s": "5"}]},
    ]
    for bad in malformed:
        with pytest.raises(ValueError):
            book.load_json(bad)
    assert book.active == {"r1": op}
    saved = book.checkpoint()
    ended = book.end("r1", 2.0, "done")
    assert ended is not None and ended.state == "ended" and op.state == "active"
    book.rollback(saved)
    assert book.active == {"r1": op} and book.ended == []
    assert repr(book) == "<OperationBook active=1 ended=0>"
