"""Cross-region metrics: scrape each region's ``metrics_path`` and sum the series.

Every region with a ``metrics_path`` is scraped concurrently (one GET each, a total
timeout, a body size cap), the Prometheus text is parsed with prometheus-client's parser,
and samples are summed across regions by sample name and label set. Counters, gauges,
histogram buckets/sums/counts and summary sums/counts add up meaningfully; summary
quantiles, info and stateset series do not, and are left out (``skipped`` counts them).
A region that cannot be scraped (refused, timed out, non-2xx, unparsable) is reported
with its error, never silently missing from the sums.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router import __version__
from router.state.snapshot import RegionView

MAX_METRICS_BYTES = 16 * 1024 * 1024
SUMMABLE_TYPES = frozenset(
    {"counter", "gauge", "histogram", "gaugehistogram", "untyped", "unknown"}
)
SUMMARY_PARTS = ("_sum", "_count")


@dataclass(slots=True)
class RegionScrape:
    region: str
    url: str
    ok: bool
    error: str | None = None
    status: int | None = None
    duration_s: float = 0.0
    families: list[Any] = field(default_factory=list)  # prometheus_client Metric

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "url": self.url,
            "ok": self.ok,
            "error": self.error,
            "status": self.status,
            "duration_ms": round(self.duration_s * 1000.0, 3),
            "families": len(self.families),
        }


async def scrape_region(
    session: aiohttp.ClientSession, region: RegionView, timeout_s: float
) -> RegionScrape:
    assert region.metrics_path is not None
    url = region.endpoint.url + region.metrics_path
    started = time.monotonic()
    result = RegionScrape(region=region.id, url=url, ok=False)
    ssl_ctx: ssl.SSLContext | bool = True
    if region.ca_file is not None and region.endpoint.scheme == "https":
        ssl_ctx = ssl.create_default_context(cafile=region.ca_file)
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"Accept": "text/plain;version=0.0.4", "User-Agent": _UA},
            allow_redirects=False,
            ssl=ssl_ctx,
        ) as resp:
            result.status = resp.status
            if not 200 <= resp.status < 300:
                result.error = f"status {resp.status}"
                return result
            raw = await resp.content.read(MAX_METRICS_BYTES + 1)
            if len(raw) > MAX_METRICS_BYTES:
                result.error = f"metrics body larger than {MAX_METRICS_BYTES} bytes"
                return result
    except TimeoutError:
        result.error = f"timeout after {timeout_s:g}s"
        return result
    except (aiohttp.ClientError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        result.duration_s = time.monotonic() - started
    try:
        result.families = list(text_string_to_metric_families(raw.decode("utf-8", "replace")))
    except (ValueError, TypeError, IndexError) as exc:
        result.error = f"unparsable metrics: {exc}"
        return result
    result.ok = True
    return result


_UA = f"region-router/{__version__}"


@dataclass(slots=True)
class _Family:
    name: str
    type: str
    help: str
    regions: set[str] = field(default_factory=set)
    # (sample name, sorted labels) -> summed value
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def sum_families(scrapes: Iterable[RegionScrape]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """(families with summed samples, samples skipped, type conflicts)."""
    families: dict[str, _Family] = {}
    skipped = 0
    conflicts: list[str] = []
    for scrape in scrapes:
        if not scrape.ok:
            continue
        for fam in scrape.families:
            mtype = str(fam.type)
            if mtype not in SUMMABLE_TYPES and mtype != "summary":
                skipped += len(fam.samples)
                continue
            acc = families.get(fam.name)
            if acc is None:
                acc = families[fam.name] = _Family(fam.name, mtype, str(fam.documentation))
            elif acc.type != mtype:
                conflicts.append(
                    f"{fam.name}: {scrape.region} says {mtype}, another region said {acc.type}"
                )
                skipped += len(fam.samples)
                continue
            acc.regions.add(scrape.region)
            for s in fam.samples:
                if mtype == "summary" and not s.name.endswith(SUMMARY_PARTS):
                    skipped += 1
                    continue
                key = (str(s.name), tuple(sorted((str(k), str(v)) for k, v in s.labels.items())))
                acc.samples[key] = acc.samples.get(key, 0.0) + float(s.value)
    out = [
        {
            "name": f.name,
            "type": f.type,
            "help": f.help,
            "regions": sorted(f.regions),
            "samples": [
                {"name": name, "labels": dict(labels), "value": value}
                for (name, labels), value in sorted(f.samples.items())
            ],
        }
        for f in sorted(families.values(), key=lambda f: f.name)
    ]
    return out, skipped, conflicts


async def aggregate(
    session: aiohttp.ClientSession, regions: Sequence[RegionView], timeout_s: float
) -> dict[str, Any]:
    """Scrape every region that has a ``metrics_path`` and sum what they report."""
    targets = [r for r in regions if r.metrics_path]
    scrapes = await asyncio.gather(*(scrape_region(session, r, timeout_s) for r in targets))
    families, skipped, conflicts = sum_families(scrapes)
    return {
        "scraped": [s.to_json() for s in scrapes if s.ok],
        "unscrapeable": [
            {"region": s.region, "url": s.url, "error": s.error, "status": s.status}
            for s in scrapes
            if not s.ok
        ],
        "not_configured": [r.id for r in regions if not r.metrics_path],
        "sums": {
            series_key(sample["name"], sample["labels"]): sample["value"]
            for fam in families
            for sample in fam["samples"]
        },
        "families": families,
        "skipped_samples": skipped,
        "type_conflicts": conflicts,
    }


def series_key(name: str, labels: dict[str, str]) -> str:
    """``name{a="1",b="2"}`` in Prometheus notation, labels sorted."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
