"""Replication jobs through the admin API against real HTTP stores (aiohttp store apps)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer

from router.config.loader import Config
from tests.conftest import StartRouter, make_config
from tests.stores import Store, admin_call, file_sha256, start_store, wait_job, write_payload

MODEL = "/models/fraud/v3.bin"
FAST = {"concurrency": 2, "attempts": 3, "backoff_base": "10ms"}


def config(stores: list[Store], state_dir: Path, **replication: Any) -> Config:
    return make_config(
        [s.config() for s in stores],
        replication={**FAST, **replication},
        state_dir=str(state_dir),
    )


def counter(metrics: CollectorRegistry, kind: str, result: str) -> float:
    value = metrics.get_sample_value(
        "router_replication_jobs_total", {"kind": kind, "result": result}
    )
    return value or 0.0


def job_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "model",
        "name": "fraud-model",
        "path": MODEL,
        "source": "src",
        "targets": ["t1", "t2"],
    }
    body.update(over)
    return body


async def three_stores(aiohttp_server: AiohttpServer, tmp_path: Path, **t2: Any) -> list[Store]:
    src = await start_store(aiohttp_server, tmp_path, "src")
    t1 = await start_store(aiohttp_server, tmp_path, "t1", report="digest")
    t2_store = await start_store(aiohttp_server, tmp_path, "t2", **({"report": "none"} | t2))
    return [src, t1, t2_store]


async def test_copies_to_every_target_verifies_and_records_the_artifact(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    digest = write_payload(src.file(MODEL), 3 * 1024 * 1024 + 17)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    status, job = await admin_call(service, "POST", "/admin/replications", job_body())
    assert status == 202, job
    assert job["state"] in ("pending", "running")
    assert [t["state"] for t in job["targets"]] == ["pending", "pending"]
    done = await wait_job(service, job["id"])

    assert done["state"] == "succeeded", done
    assert done["sha256"] == digest
    assert done["size_bytes"] == 3 * 1024 * 1024 + 17
    by_region = {t["region"]: t for t in done["targets"]}
    assert by_region["t1"]["verified_by"] == "target-digest"  # the store's Digest header
    assert by_region["t2"]["verified_by"] == "read-back"  # it reports nothing: hashed back
    for t in done["targets"]:
        assert t["state"] == "verified"
        assert t["digest"] == digest
        assert t["attempts"] == 1
        assert t["bytes"] == done["size_bytes"]
    assert file_sha256(t1.file(MODEL)) == digest
    assert file_sha256(t2.file(MODEL)) == digest
    assert src.gets in ([MODEL, MODEL], [MODEL])  # once (+1 re-hash if racy)

    _, region = await admin_call(service, "GET", "/admin/regions/t1")
    assert region["artifacts"] == [f"fraud-model@{digest}"]
    _, region = await admin_call(service, "GET", "/admin/regions/src")
    assert region["artifacts"] == []  # the source is the fallback, not a verified copy
    assert counter(service.runtime.metrics, "model", "succeeded") == 1
    assert counter(service.runtime.metrics, "config", "failed") == 0  # series pre-created
    assert not list((tmp_path / "state" / "spool").iterdir())  # spool removed when done

    _, listing = await admin_call(service, "GET", "/admin/replications")
    assert [j["id"] for j in listing["jobs"]] == [job["id"]]
    _, listing = await admin_call(service, "GET", "/admin/replications?state=failed")
    assert listing["jobs"] == []


async def test_target_failing_twice_then_succeeding_is_retried_with_backoff(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path, fail_puts=2, report="json")
    digest = write_payload(src.file(MODEL), 512 * 1024)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body())
    done = await wait_job(service, job["id"])

    assert done["state"] == "succeeded", done
    t2_progress = next(t for t in done["targets"] if t["region"] == "t2")
    assert t2_progress["attempts"] == 3
    assert t2_progress["verified_by"] == "target-digest"  # from the JSON answer
    assert "503" in t2_progress["last_error"]
    assert t2.put_attempts == 3 and t2.puts == [MODEL]
    assert t1.put_attempts == 1
    assert file_sha256(t2.file(MODEL)) == digest


async def test_target_out_of_attempts_fails_the_job_but_keeps_verified_copies(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path, fail_puts=5)
    digest = write_payload(src.file(MODEL), 100_000)
    service = await start_router(config([src, t1, t2], tmp_path / "state", attempts=2))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body(kind="config"))
    done = await wait_job(service, job["id"])

    assert done["state"] == "failed"
    assert "t2" in done["error"] and "503" in done["error"]
    states = {t["region"]: (t["state"], t["attempts"]) for t in done["targets"]}
    assert states == {"t1": ("verified", 1), "t2": ("failed", 2)}
    _, region = await admin_call(service, "GET", "/admin/regions/t1")
    assert region["artifacts"] == [f"fraud-model@{digest}"]
    assert counter(service.runtime.metrics, "config", "failed") == 1


async def test_bad_requests_are_refused_with_field_paths(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    write_payload(src.file(MODEL), 1000)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    async def refused(body: Any, status: int = 400) -> list[str]:
        code, answer = await admin_call(service, "POST", "/admin/replications", body)
        assert code == status, answer
        return [d["path"] for d in answer["error"].get("details") or []]

    assert await refused(job_body(source="nope")) == ["source"]
    assert await refused(job_body(targets=["t1", "nope"])) == ["targets[1]"]
    assert await refused(job_body(targets=["src"])) == ["targets[0]"]  # source == target
    assert await refused(job_body(path="models/x.bin")) == ["path"]  # not absolute
    assert await refused(job_body(path="/models/../etc/passwd")) == ["path"]
    assert await refused(job_body(targets=[])) == ["targets"]
    assert await refused(job_body(targets="some")) == ["targets"]
    assert await refused(job_body(kind="video", name="")) == ["kind", "name"]
    assert await refused({"kind": "model"}) == ["name", "path", "source", "targets"]
    assert await refused(job_body(extra=1)) == ["extra"]
    # the source is asked with a HEAD first: nothing there is a 400 now, not a failed job
    assert await refused(job_body(path="/models/missing.bin")) == ["path"]

    status, answer = await admin_call(service, "GET", "/admin/replications/rep-nope")
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, answer = await admin_call(service, "POST", "/admin/replications/rep-nope/cancel")
    assert status == 404
    assert service.control.replication.jobs == {}


async def test_source_missing_on_fetch_fails_the_job_clearly(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    src.hide_on_get = True  # HEAD sees it, GET answers 404
    write_payload(src.file(MODEL), 1000)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body(targets="all"))
    done = await wait_job(service, job["id"])

    assert done["state"] == "failed"
    assert "404" in done["error"] and MODEL in done["error"]
    assert {t["state"] for t in done["targets"]} == {"failed"}
    assert [t["region"] for t in done["targets"]] == ["t1", "t2"]  # "all" = all but the source
    assert t1.put_attempts == 0 and t2.put_attempts == 0


async def test_source_changing_mid_copy_fails_the_job(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    write_payload(src.file(MODEL), 1024 * 1024)
    src.rewrite_during_get = b"\x00" * (1024 * 1024)  # same size, rewritten in place
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body())
    done = await wait_job(service, job["id"])

    assert done["state"] == "failed"
    assert "source changed while it was read" in done["error"]
    assert t1.put_attempts == 0 and t2.put_attempts == 0  # nothing torn was spread
    assert not t1.file(MODEL).exists()


async def test_source_without_validators_changing_mid_copy_is_caught_by_rehash(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    src.validators = False  # no ETag, no Last-Modified: only a second hash can tell
    write_payload(src.file(MODEL), 1024 * 1024)
    src.rewrite_during_get = b"\x01" * (1024 * 1024)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body())
    done = await wait_job(service, job["id"])

    assert done["state"] == "failed"
    assert "read twice" in done["error"]
    assert t1.put_attempts == 0


async def test_cancel_stops_the_job_and_removes_its_spool(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    t1.put_gate = asyncio.Event()  # t1's PUT hangs until the test lets it go (never)
    t2.put_gate = asyncio.Event()
    write_payload(src.file(MODEL), 256 * 1024)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body())
    await asyncio.wait_for(t1.put_waiting.wait(), 10)
    running = await wait_job(service, job["id"], lambda j: j["progress"]["copied_bytes"] > 0)
    assert running["state"] == "running"
    assert any(t["state"] == "copying" for t in running["targets"])
    assert list((tmp_path / "state" / "spool").iterdir())

    status, cancelled = await admin_call(service, "DELETE", f"/admin/replications/{job['id']}")
    assert status == 200, cancelled
    assert cancelled["state"] == "cancelled"
    assert {t["state"] for t in cancelled["targets"]} == {"failed"}
    assert {t["last_error"] for t in cancelled["targets"]} == {"job cancelled"}
    assert not list((tmp_path / "state" / "spool").iterdir())
    assert service.control.replication._tasks == {}
    assert counter(service.runtime.metrics, "model", "cancelled") == 1
    assert not t1.file(MODEL).exists()

    # cancelling again is harmless; a finished job cannot be cancelled
    status, again = await admin_call(service, "POST", f"/admin/replications/{job['id']}/cancel")
    assert status == 200 and again["state"] == "cancelled"
    t1.put_gate = t2.put_gate = None
    _, other = await admin_call(service, "POST", "/admin/replications", job_body(targets=["t1"]))
    await wait_job(service, other["id"])
    status, answer = await admin_call(service, "DELETE", f"/admin/replications/{other['id']}")
    assert status == 409 and "already ended" in answer["error"]["message"]


async def test_overlapping_jobs_conflict(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    t1.put_gate = asyncio.Event()
    write_payload(src.file(MODEL), 1000)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    _, job = await admin_call(service, "POST", "/admin/replications", job_body(targets=["t1"]))
    status, answer = await admin_call(service, "POST", "/admin/replications", job_body())
    assert status == 409, answer
    assert job["id"] in answer["error"]["message"]
    # reading from the region being written is a conflict too
    status, _ = await admin_call(
        service, "POST", "/admin/replications", job_body(source="t1", targets=["t2"])
    )
    assert status == 409
    status, _ = await admin_call(service, "POST", "/admin/replications", job_body(targets=["t2"]))
    assert status == 202
    t1.put_gate.set()
    assert (await wait_job(service, job["id"]))["state"] == "succeeded"


async def test_restart_mid_job_resumes_without_recopying_verified_targets(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    t2.put_gate = asyncio.Event()
    digest = write_payload(src.file(MODEL), 2 * 1024 * 1024)
    cfg = config([src, t1, t2], tmp_path / "state")
    first = await start_router(cfg)

    _, job = await admin_call(first, "POST", "/admin/replications", job_body())
    await wait_job(
        first,
        job["id"],
        lambda j: j["targets"][0]["state"] == "verified" and t2.put_waiting.is_set(),
    )
    gets_before = len(src.gets)
    await first.stop(grace_s=0.1)  # mid-job: t1 verified, t2 in the middle of its PUT

    t2.put_gate = None
    second = await start_router(cfg)
    done = await wait_job(second, job["id"])

    assert done["state"] == "succeeded", done
    assert t1.put_attempts == 1  # verified before the restart: not copied again
    assert t2.puts == [MODEL]
    assert len(src.gets) == gets_before  # the intact spool was reused: source not re-read
    t2_progress = done["targets"][1]
    assert t2_progress["attempts"] == 1  # the interrupted try does not count
    assert file_sha256(t2.file(MODEL)) == digest
    _, region = await admin_call(second, "GET", "/admin/regions/t2")
    assert region["artifacts"] == [f"fraud-model@{digest}"]


async def test_restart_with_spool_gone_and_source_changed_fails_the_job(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    t2.put_gate = asyncio.Event()
    write_payload(src.file(MODEL), 300_000)
    cfg = config([src, t1, t2], tmp_path / "state")
    first = await start_router(cfg)
    _, job = await admin_call(first, "POST", "/admin/replications", job_body())
    await wait_job(first, job["id"], lambda j: j["targets"][0]["state"] == "verified")
    await asyncio.wait_for(t2.put_waiting.wait(), 10)
    await first.stop(grace_s=0.1)

    for spool in (tmp_path / "state" / "spool").iterdir():
        spool.unlink()  # the spool is gone: the source must be read again ...
    write_payload(src.file(MODEL), 300_000, seed=1)  # ... and it has changed since
    t2.put_gate = None
    second = await start_router(cfg)
    done = await wait_job(second, job["id"])

    assert done["state"] == "failed"
    assert "source changed since the job started" in done["error"]
    assert t2.puts == []
    states = {t["region"]: t["state"] for t in done["targets"]}
    assert states == {"t1": "verified", "t2": "failed"}


async def test_inventory_survives_a_restart(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    digest = write_payload(src.file(MODEL), 10_000)
    cfg = config([src, t1, t2], tmp_path / "state")
    first = await start_router(cfg)
    _, job = await admin_call(first, "POST", "/admin/replications", job_body(targets=["t1"]))
    assert (await wait_job(first, job["id"]))["state"] == "succeeded"
    await first.stop(grace_s=0.1)

    second = await start_router(cfg)
    _, region = await admin_call(second, "GET", "/admin/regions/t1")
    assert region["artifacts"] == [f"fraud-model@{digest}"]
    snap = second.runtime.registry.snapshot()
    assert snap.artifacts["fraud-model"].sha256 == digest
    assert snap.artifacts["fraud-model"].source == "src"
    _, listing = await admin_call(second, "GET", "/admin/replications")
    assert [j["state"] for j in listing["jobs"]] == ["succeeded"]


async def test_compat_replicate_model_maps_onto_a_job(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    digest = write_payload(src.file("/models/churn"), 50_000)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))

    async def compat(**body: Any) -> tuple[int, Any]:
        body = {"operation": "replicate-model", **body}
        return await admin_call(service, "POST", "/api/multi-region", body)

    status, answer = await compat(modelId="churn", regionId="t1", fromRegionId="src")
    assert status == 202, answer
    assert answer["success"] is True
    data = answer["data"]
    assert data["path"] == "/models/churn"  # from replication.model_path
    assert (data["fromRegionId"], data["regionIds"]) == ("src", ["t1"])
    assert (await wait_job(service, data["jobId"]))["state"] == "succeeded"

    # Without fromRegionId the source is the one the latest job of that model read from.
    status, answer = await compat(modelId="churn", regionId="t2")
    assert status == 202, answer
    assert answer["data"]["fromRegionId"] == "src"
    done = await wait_job(service, answer["data"]["jobId"])
    assert done["state"] == "succeeded" and done["sha256"] == digest

    status, answer = await compat(modelId="other", regionId="t2")
    assert status == 400 and answer["success"] is False
    assert answer["details"][0]["path"] == "fromRegionId"
    status, answer = await compat(modelId="churn", regionId="nope", fromRegionId="src")
    assert status == 400 and answer["details"][0]["path"] == "regionId"


async def test_artifact_inventory_is_listed_shown_in_status_and_can_forget_a_copy(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src, t1, t2 = await three_stores(aiohttp_server, tmp_path)
    digest = write_payload(src.file(MODEL), 20_000)
    service = await start_router(config([src, t1, t2], tmp_path / "state"))
    _, job = await admin_call(service, "POST", "/admin/replications", job_body())
    await wait_job(service, job["id"])

    _, listing = await admin_call(service, "GET", "/admin/artifacts")
    assert listing["artifacts"] == [
        {
            "name": "fraud-model",
            "sha256": digest,
            "source": "src",
            "read_at": listing["artifacts"][0]["read_at"],
            "regions": [
                {"region": "t1", "sha256": digest, "latest": True},
                {"region": "t2", "sha256": digest, "latest": True},
            ],
        }
    ]
    _, status = await admin_call(service, "GET", "/admin/status")
    assert status["replication"]["active_jobs"] == []
    assert status["replication"]["artifacts"] == listing["artifacts"]

    code, answer = await admin_call(service, "DELETE", "/admin/artifacts/fraud-model/regions/t1")
    assert code == 200 and answer["removed"] is True
    _, region = await admin_call(service, "GET", "/admin/regions/t1")
    assert region["artifacts"] == []
    code, _ = await admin_call(service, "DELETE", "/admin/artifacts/fraud-model/regions/t1")
    assert code == 404
    code, _ = await admin_call(service, "DELETE", "/admin/artifacts/fraud-model/regions/nope")
    assert code == 404
