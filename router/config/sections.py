"""Builds the config dataclasses from plain, env-expanded data, one section at a time.

Every check that can be decided from the file alone is made here, and every error is
collected with its path; ``router.config.loader`` wraps this with YAML, ``${VAR}`` and the hash.
Some sections live beside it: regions (regions.py), tls and dns (edge.py), and what shapes
the forwarding of one request (forwarding.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from router.config.edge import dns_section, tls_section
from router.config.forwarding import (
    hedging_section,
    http2_section,
    limits_section,
    response_headers_section,
    retries_section,
    timeouts_section,
)
from router.config.model import (
    AccessLogConfig,
    AdminConfig,
    AffinityConfig,
    AlertsConfig,
    Config,
    FailoverConfig,
    GeoConfig,
    HealthCheckConfig,
    HostPort,
    ListenConfig,
    OutlierDetectionConfig,
    ReloadConfig,
    ReplicationConfig,
    RouteConfig,
    RouteMatch,
    StateConfig,
)
from router.config.redis_url import SENTINEL_SCHEME, parse_sentinel_url
from router.config.regions import region_ref, regions_section
from router.config.units import show
from router.config.validate import (
    FieldError,
    Fields,
    as_choice,
    as_str,
    list_items,
)
from router.config.values import (
    BACKEND_CHOICES,
    STRATEGY_CHOICES,
    VERSION_CHOICES,
    parse_artifact_fallback,
    parse_fraction,
    parse_hostport,
    parse_http_url,
    parse_path,
    parse_quorum,
    parse_route_host,
    parse_status_ranges,
    parse_token,
)

_ROUTE = RouteConfig(match=RouteMatch())


# -- sections --------------------------------------------------------------------------------


def _listen(f: Fields) -> ListenConfig:
    d = ListenConfig()
    with f:
        proxy = f.get("proxy", parse_hostport, d.proxy)
        admin = f.get("admin", parse_hostport, d.admin)
        https = f.get("https", parse_optional_hostport, d.https)
    if f.clean and proxy == admin and proxy.port != 0:
        f.error("admin", f"same address as listen.proxy ({proxy})")
    if f.clean and https is not None and https.port != 0 and https in (proxy, admin):
        f.error("https", f"same address as another listener ({https})")
    return ListenConfig(proxy=proxy, admin=admin, https=https)


def parse_optional_hostport(value: object) -> HostPort | None:
    """A listen address, or ``""`` for none."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_hostport(value)


def _health_check(f: Fields) -> HealthCheckConfig:
    d = HealthCheckConfig()
    with f:
        hc = HealthCheckConfig(
            path=f.get("path", parse_path, d.path),
            interval_s=f.duration("interval", d.interval_s),
            timeout_s=f.duration("timeout", d.timeout_s),
            healthy_threshold=f.integer("healthy_threshold", d.healthy_threshold, lo=1),
            unhealthy_threshold=f.integer("unhealthy_threshold", d.unhealthy_threshold, lo=1),
            expected_status=f.get("expected_status", parse_status_ranges, d.expected_status),
            jitter_percent=f.percent("jitter", d.jitter_percent),
            body_contains=f.optional("body_contains", as_str(nonempty=True)),
            grpc_service=f.optional("grpc_service", as_str()),
        )
    if f.clean and hc.timeout_s > hc.interval_s:
        f.error("timeout", f"must not exceed interval ({hc.timeout_s:g}s > {hc.interval_s:g}s)")
    return hc


def _outlier_detection(f: Fields) -> OutlierDetectionConfig:
    d = OutlierDetectionConfig()
    with f:
        od = OutlierDetectionConfig(
            consecutive_failures=f.integer("consecutive_failures", d.consecutive_failures, lo=1),
            base_ejection_time_s=f.duration("base_ejection_time", d.base_ejection_time_s),
            max_ejection_time_s=f.duration("max_ejection_time", d.max_ejection_time_s),
            max_ejection_percent=f.percent("max_ejection_percent", d.max_ejection_percent),
        )
    if f.clean and od.max_ejection_time_s < od.base_ejection_time_s:
        f.error("max_ejection_time", "must not be shorter than base_ejection_time")
    return od


def _failover(f: Fields) -> FailoverConfig:
    d = FailoverConfig()
    with f:
        return FailoverConfig(
            overprovisioning_factor=f.number(
                "overprovisioning_factor", d.overprovisioning_factor, lo=1.0, hi=100.0
            ),
            panic_threshold_percent=f.percent("panic_threshold", d.panic_threshold_percent),
            slow_start_s=f.duration("slow_start", d.slow_start_s, positive=False),
        )


def _routes(f: Fields, region_ids: Collection[str]) -> tuple[RouteConfig, ...]:
    routes: list[RouteConfig] = []
    for path, item in f.items("routes"):
        before = len(f.errors)
        with Fields(item, path, f.errors) as r:
            with r.section("match") as m:
                match = RouteMatch(
                    path_prefix=m.optional("path_prefix", parse_path),
                    host=m.optional("host", parse_route_host),
                )
            if not r.has("match") and r.clean:
                r.error("match", "required")
            elif r.clean and match.path_prefix is None and match.host is None:
                r.error("match", "needs at least one of path_prefix, host")
            regions: list[str] = []
            for item_path, value in r.items("regions"):
                try:
                    regions.append(region_ref(region_ids)(value))
                except ValueError as exc:
                    f.errors.append(FieldError(item_path, str(exc)))
            if len(set(regions)) != len(regions):
                r.error("regions", "lists a region twice")
            route = RouteConfig(
                match=match,
                strategy=r.optional("strategy", as_choice(STRATEGY_CHOICES)),
                regions=tuple(regions),
                requires_artifact=r.optional("requires_artifact", as_str(nonempty=True)),
                artifact_version=r.choice(
                    "artifact_version", _ROUTE.artifact_version, VERSION_CHOICES
                ),
                artifact_fallback=r.get(
                    "artifact_fallback",
                    parse_artifact_fallback,
                    _ROUTE.artifact_fallback,
                ),
            )
        if len(f.errors) == before:
            routes.append(route)
    return tuple(routes)


def _affinity(f: Fields) -> AffinityConfig | None:
    if f.raw("affinity") is None:
        return None
    with f.section("affinity") as a:
        affinity = AffinityConfig(
            cookie=a.optional("cookie", parse_token),
            header=a.optional("header", parse_token),
            cookie_max_age_s=a.duration("cookie_max_age", 0.0, positive=False),
        )
        if a.clean and (affinity.cookie is None) == (affinity.header is None):
            a.error(None, "set exactly one of cookie or header")
    return affinity


def _geo(f: Fields, region_ids: Collection[str]) -> GeoConfig:
    d = GeoConfig()
    with f:
        proximity: dict[str, tuple[str, ...]] = {}
        for client_region, path, value in f.entries("proximity"):
            ids: list[str] = []
            for item_path, item in list_items(value, path, f.errors):
                try:
                    ids.append(region_ref(region_ids)(item))
                except ValueError as exc:
                    f.errors.append(FieldError(item_path, str(exc)))
            proximity[client_region] = tuple(ids)
        return GeoConfig(
            header=f.get("header", parse_token, d.header),
            label=f.text("label", d.label, nonempty=True),
            proximity=MappingProxyType(proximity),
        )


def _state(f: Fields) -> StateConfig:
    d = StateConfig()
    with f:
        url = f.text("url", d.url, nonempty=True)
        if url.startswith(SENTINEL_SCHEME):
            try:
                parse_sentinel_url(url)
            except ValueError as exc:
                f.error("url", str(exc))
        elif not url.startswith(("redis://", "rediss://", "unix://")):
            f.error(
                "url",
                "expected a redis://, rediss://, unix:// or redis+sentinel:// URL, "
                f"got {show(url)}",
            )
        return StateConfig(
            backend=f.choice("backend", d.backend, BACKEND_CHOICES),
            url=url,
            key_prefix=f.text("key_prefix", d.key_prefix, nonempty=True),
            quorum_percent=f.get("quorum", parse_quorum, d.quorum_percent),
        )


def _replication(f: Fields) -> ReplicationConfig:
    d = ReplicationConfig()
    with f:
        return ReplicationConfig(
            concurrency=f.integer("concurrency", d.concurrency, lo=1, hi=1000),
            attempts=f.integer("attempts", d.attempts, lo=1, hi=100),
            lease_s=f.duration("lease", d.lease_s),
            verify=f.flag("verify", d.verify),
            backoff_base_s=f.duration("backoff_base", d.backoff_base_s, positive=False),
            model_path=f.get("model_path", parse_path, d.model_path),
        )


def _alerts(f: Fields) -> AlertsConfig:
    d = AlertsConfig()
    with f:
        return AlertsConfig(
            error_rate=f.get("error_rate", parse_fraction, d.error_rate),
            latency_p95_s=f.duration("latency_p95", d.latency_p95_s),
            window_s=f.duration("window", d.window_s),
            evaluate_interval_s=f.duration("evaluate_interval", d.evaluate_interval_s),
            webhook=f.optional("webhook", parse_http_url),
            for_s=f.duration("for", d.for_s, positive=False),
        )


def _admin(f: Fields) -> AdminConfig:
    d = AdminConfig()
    with f:
        return AdminConfig(
            token=f.text("token", d.token),
            public_metrics=f.flag("public_metrics", d.public_metrics),
            max_body_bytes=f.size("max_body", d.max_body_bytes, positive=True),
        )


def _reload(f: Fields) -> ReloadConfig:
    d = ReloadConfig()
    with f:
        return ReloadConfig(
            watch=f.flag("watch", d.watch),
            debounce_s=f.duration("debounce", d.debounce_s, positive=False),
        )


BUSY_POLL_MAX_S = 0.01  # past this, polling would burn more CPU than any wake-up costs


def _access_log(f: Fields) -> bool | AccessLogConfig:
    """``true``/``false`` (stdout or off), or ``{path: FILE}``."""
    if not isinstance(f.raw("access_log"), Mapping):
        return f.flag("access_log", True)
    with f.section("access_log") as sub:
        path = sub.required("path", as_str(nonempty=True))
    return AccessLogConfig(path=path) if path is not None else True


def build_config(data: object, errors: list[FieldError]) -> Config:
    """The whole config from env-expanded data; check ``errors`` before trusting the result.

    Sections are read in the order the contract lists them, so errors come out in that order.
    """
    d = Config()
    with Fields(data, "", errors) as f:
        listen = _listen(f.section("listen"))
        admin = _admin(f.section("admin"))
        reload = _reload(f.section("reload"))
        preserve_host = f.flag("preserve_host", d.preserve_host)
        response_headers = response_headers_section(f.section("response_headers"))
        state_dir = f.text("state_dir", d.state_dir, nonempty=True)
        state = _state(f.section("state"))
        instance_id = f.text("instance_id", d.instance_id)
        strategy = f.choice("strategy", d.strategy, STRATEGY_CHOICES)
        regions, region_ids = regions_section(f)
        return Config(
            listen=listen,
            admin=admin,
            reload=reload,
            preserve_host=preserve_host,
            response_headers=response_headers,
            state_dir=state_dir,
            state=state,
            instance_id=instance_id,
            strategy=strategy,
            regions=regions,
            health_check=_health_check(f.section("health_check")),
            outlier_detection=_outlier_detection(f.section("outlier_detection")),
            failover=_failover(f.section("failover")),
            retries=retries_section(f.section("retries")),
            timeouts=timeouts_section(f.section("timeouts")),
            hedging=hedging_section(f.section("hedging")),
            http2=http2_section(f.section("http2")),
            limits=limits_section(f.section("limits")),
            routes=_routes(f, region_ids),
            affinity=_affinity(f),
            geo=_geo(f.section("geo"), region_ids),
            replication=_replication(f.section("replication")),
            alerts=_alerts(f.section("alerts")),
            access_log=_access_log(f),
            shutdown_grace_s=f.duration("shutdown_grace", d.shutdown_grace_s, positive=False),
            busy_poll_s=f.duration("busy_poll", d.busy_poll_s, positive=False, hi=BUSY_POLL_MAX_S),
            tls=tls_section(f, listen.https),
            dns=dns_section(f.section("dns")),
        )
