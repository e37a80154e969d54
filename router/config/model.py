"""The typed, frozen configuration objects (CONTRACT section 3); ``router.config.loader``
loads them.

Durations are float seconds (fields end in ``_s``), sizes are int bytes (``_bytes``),
percentages are floats in 0..100 (``_percent``). Every default lives here and is mirrored in
docs/configuration.md. Import these from ``router.config.loader``, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

StrategyName = Literal["latency", "weighted", "round_robin", "least_outstanding", "priority", "geo"]
STRATEGIES: tuple[str, ...] = (
    "latency",
    "weighted",
    "round_robin",
    "least_outstanding",
    "priority",
    "geo",
)
RETRY_CONDITIONS: tuple[str, ...] = ("connect-failure", "reset", "timeout")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    proxy: HostPort = HostPort(host="0.0.0.0", port=8080)
    admin: HostPort = HostPort(host="127.0.0.1", port=9901)
    https: HostPort | None = None  # the same proxy over TLS (needs ``tls``)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    token: str = ""
    public_metrics: bool = False
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadConfig:
    watch: bool = True
    debounce_s: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHeadersConfig:
    region: bool = True
    request_id: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLogConfig:
    """``access_log: {path: FILE}``: JSON lines appended to FILE, reopened on SIGUSR1."""

    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    backend: Literal["file", "redis"] = "file"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "region-router:default"
    # None means "majority of live instances"; otherwise the share (0..100) that must agree.
    quorum_percent: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A region's parsed base URL, decided once at load so the hot path never parses it."""

    url: str  # normalised: lower-case scheme and host, no default port, no trailing slash
    scheme: Literal["http", "https"]
    host: str
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash), prepended to the request path
    # Derived once here, used by every request: the upstream Host header and base path.
    host_header_bytes: bytes = field(init=False, repr=False, compare=False)
    base_path_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_header_bytes", self.host_header.encode("idna"))
        object.__setattr__(self, "base_path_bytes", self.base_path.encode())

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionConfig:
    id: str
    name: str
    endpoint: Endpoint
    weight: int = 100
    priority: int = 0
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    metrics_path: str | None = None
    max_inflight: int = 0
    ca_file: str | None = None  # extra CA bundle for an https endpoint
    protocol: Literal["http1", "h2"] = "http1"  # h2: HTTP/2 to the region (gRPC; docs/http2.md)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    path: str = "/health"
    interval_s: float = 5.0
    timeout_s: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    # inclusive ranges, e.g. "200-399" or "200,204,300-399"
    expected_status: tuple[tuple[int, int], ...] = ((200, 399),)
    jitter_percent: float = 10.0
    body_contains: str | None = None
    # regions with protocol h2: probe with grpc.health.v1.Health/Check for this service name
    # ("" = the whole server) instead of an HTTP/2 GET of ``path``; None = GET
    grpc_service: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetectionConfig:
    consecutive_failures: int = 5
    base_ejection_time_s: float = 30.0
    max_ejection_time_s: float = 300.0
    max_ejection_percent: float = 50.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverConfig:
    overprovisioning_factor: float = 1.4
    panic_threshold_percent: float = 50.0
    slow_start_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetriesConfig:
    max_retries: int = 2
    on_conditions: frozenset[str] = frozenset(RETRY_CONDITIONS)  # subset of RETRY_CONDITIONS
    on_statuses: frozenset[int] = frozenset({502, 503, 504})
    budget_percent: float = 20.0
    min_concurrent: int = 3
    buffer_body_max_bytes: int = 1024 * 1024
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutsConfig:
    connect_s: float = 2.0
    response_headers_s: float = 30.0
    idle_s: float = 60.0
    per_try_s: float = 0.0  # a try without response headers after this is retried; 0 = off


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgingConfig:
    """Backup requests: a retryable request still without headers after ``delay`` gets a copy."""

    enabled: bool = False
    delay_s: float | None = None  # None: auto, the chosen region's current p95 estimate
    max_extra: int = 1  # copies beyond the first try
    budget_percent: float = 5.0  # hedges in flight, as a share of requests in flight


@dataclass(frozen=True, slots=True, kw_only=True)
class Http2Config:
    """HTTP/2 to clients: h2c with prior knowledge on the plain listener, ALPN h2 on https."""

    enabled: bool = False
    max_concurrent_streams: int = 100  # per client connection (SETTINGS_MAX_CONCURRENT_STREAMS)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_body_bytes: int = 100 * 1024 * 1024
    max_header_bytes: int = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    path_prefix: str | None = None
    host: str | None = None  # exact host (port ignored), case-insensitive; "*.example.com" allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    match: RouteMatch
    strategy: StrategyName | None = None  # None: the top-level strategy
    regions: tuple[str, ...] = ()  # empty: every region
    requires_artifact: str | None = None
    artifact_version: Literal["latest", "any"] = "latest"
    artifact_fallback: Literal["503", "source"] = "503"


@dataclass(frozen=True, slots=True, kw_only=True)
class AffinityConfig:
    cookie: str | None = None
    header: str | None = None
    cookie_max_age_s: float = 0.0  # 0: a session cookie


@dataclass(frozen=True, slots=True, kw_only=True)
class GeoConfig:
    header: str = "X-Client-Region"
    label: str = "geo"  # region label compared with the header value
    # client region -> region ids in order of preference
    proximity: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationConfig:
    concurrency: int = 4
    attempts: int = 3
    lease_s: float = 15.0
    verify: bool = True
    backoff_base_s: float = 0.5
    model_path: str = "/models/{modelId}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsConfig:
    error_rate: float = 0.05  # fraction of requests over `window_s`
    latency_p95_s: float = 0.5
    window_s: float = 60.0
    evaluate_interval_s: float = 5.0
    webhook: str | None = None
    # a condition must hold this long before its alert fires (Prometheus' `for`): 0 = at once
    for_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificatePair:
    """One certificate chain and its key, checked to match when the config was read."""

    cert: str  # PEM file: the leaf first, then intermediates
    key: str  # PEM file
    names: tuple[str, ...]  # the leaf's DNS SAN names, lower-case ("*.example.com" allowed)
    not_after: float  # the leaf's expiry, Unix time (for the start-up and check notes)
    # sha256 of both files' bytes at load: a reload with new files is a config change.
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificates: tuple[CertificatePair, ...] = ()  # SNI picks by SAN; the first is the default
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_ca: str | None = None  # mTLS: client certificates must chain to this CA file
    client_ca_digest: str = ""
    redirect_http: bool = False  # the plain listener answers 308 to https
    handshake_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig:
    refresh_s: float = 30.0
    max_connection_age_s: float = 300.0
    nameservers: tuple[HostPort, ...] = ()  # empty: the system's resolvers


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    reload: ReloadConfig = ReloadConfig()
    preserve_host: bool = False
    response_headers: ResponseHeadersConfig = ResponseHeadersConfig()
    state_dir: str = "./state"
    state: StateConfig = StateConfig()
    instance_id: str = ""
    strategy: StrategyName = "latency"
    regions: tuple[RegionConfig, ...] = ()
    health_check: HealthCheckConfig = HealthCheckConfig()
    outlier_detection: OutlierDetectionConfig = OutlierDetectionConfig()
    failover: FailoverConfig = FailoverConfig()
    retries: RetriesConfig = RetriesConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    hedging: HedgingConfig = HedgingConfig()
    http2: Http2Config = Http2Config()
    limits: LimitsConfig = LimitsConfig()
    routes: tuple[RouteConfig, ...] = ()
    affinity: AffinityConfig | None = None
    geo: GeoConfig = GeoConfig()
    replication: ReplicationConfig = ReplicationConfig()
    alerts: AlertsConfig = AlertsConfig()
    access_log: bool | AccessLogConfig = True  # True: stdout
    shutdown_grace_s: float = 15.0
    # After a read, poll up to this long before letting the loop sleep (router.proxy.busypoll).
    busy_poll_s: float = 0.0002
    tls: TlsConfig | None = None  # set exactly when listen.https is
    dns: DnsConfig = DnsConfig()
    # sha256 of the canonical effective config (secrets included, so a token change reloads)
    config_hash: str = ""


def access_log_path(config: Config) -> str | None:
    """The access log's file, or None for stdout (also when the log is off)."""
    return config.access_log.path if isinstance(config.access_log, AccessLogConfig) else None
