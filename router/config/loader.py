"""Loads config.yaml into the typed ``Config`` (CONTRACT section 3): YAML, ``${VAR}``, hash.

The frozen dataclasses live in router/config/model.py and the per-section checks in
router/config/sections.py; this module is the public face and re-exports both, so other code
imports everything config-related from ``router.config.loader``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import time
from collections.abc import Hashable, Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from router.config.edge import certificate_notes
from router.config.model import (
    RETRY_CONDITIONS,
    STRATEGIES,
    AccessLogConfig,
    AdminConfig,
    AffinityConfig,
    AlertsConfig,
    CertificatePair,
    Config,
    DnsConfig,
    Endpoint,
    FailoverConfig,
    GeoConfig,
    HealthCheckConfig,
    HedgingConfig,
    HostPort,
    Http2Config,
    LimitsConfig,
    ListenConfig,
    OutlierDetectionConfig,
    RegionConfig,
    ReloadConfig,
    ReplicationConfig,
    ResponseHeadersConfig,
    RetriesConfig,
    RouteConfig,
    RouteMatch,
    StateConfig,
    StrategyName,
    TimeoutsConfig,
    TlsConfig,
    access_log_path,
)
from router.config.regions import parse_region, parse_region_patch
from router.config.sections import build_config
from router.config.validate import (
    SKIP,
    ConfigError,
    EnvText,
    FieldError,
    ValidationError,
    index,
    join,
)
from router.config.values import parse_endpoint, parse_hostport

__all__ = [
    "RETRY_CONDITIONS",
    "STRATEGIES",
    "AccessLogConfig",
    "AdminConfig",
    "AffinityConfig",
    "AlertsConfig",
    "CertificatePair",
    "Config",
    "ConfigError",
    "DnsConfig",
    "Endpoint",
    "FailoverConfig",
    "FieldError",
    "GeoConfig",
    "HealthCheckConfig",
    "HedgingConfig",
    "HostPort",
    "Http2Config",
    "LimitsConfig",
    "ListenConfig",
    "OutlierDetectionConfig",
    "RegionConfig",
    "ReloadConfig",
    "ReplicationConfig",
    "ResponseHeadersConfig",
    "RetriesConfig",
    "RouteConfig",
    "RouteMatch",
    "StateConfig",
    "StrategyName",
    "TimeoutsConfig",
    "TlsConfig",
    "ValidationError",
    "access_log_path",
    "config_from_mapping",
    "config_hash",
    "config_notes",
    "default_instance_id",
    "expand_env",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_endpoint",
    "parse_hostport",
    "parse_region",
    "parse_region_patch",
    "redacted_dict",
    "redacted_url",
    "resolve_config_path",
    "to_plain",
]

DEFAULT_CONFIG_PATH = "./config.yaml"
REDACTED = "***"

# -- YAML ------------------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars and duplicate-key detection.

    YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans (``retries: {on: [...]}`` would
    get the key ``True``, ``geo: no`` the value ``False``) and ``010`` as octal; here only
    ``true``/``false`` are booleans and only plain decimals are integers. A key given twice
    in one mapping is an error rather than "the last one wins".
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[FieldError] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                self.duplicates.append(
                    FieldError(_where(key_node.start_mark), f"duplicate key {key!r}")
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _INT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)


def _where(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"


def _load_yaml(text: str, errors: list[FieldError]) -> object:
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        message = " ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise ConfigError([FieldError(_where(exc.problem_mark), f"YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([FieldError("", f"YAML: {exc}")]) from None
    finally:
        loader.dispose()
    errors.extend(loader.duplicates)
    return data


# -- ${VAR} expansion ------------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}|\$\{")


def expand_env(
    data: object, env: Mapping[str, str], errors: list[FieldError], path: str = ""
) -> object:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string value (not in keys).

    ``$$`` is a literal ``$``. An unset ``${VAR}`` is an error at the value's path, and the
    value becomes ``SKIP`` so no second error is reported for it. Expanded strings are
    ``EnvText``, which numeric and boolean fields accept (``weight: ${WEIGHT}``).
    """
    if isinstance(data, str):
        return _expand_text(data, env, errors, path) if "$" in data else data
    if isinstance(data, Mapping):
        return {key: expand_env(value, env, errors, join(path, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [expand_env(value, env, errors, index(path, i)) for i, value in enumerate(data)]
    return data


def _expand_text(text: str, env: Mapping[str, str], errors: list[FieldError], path: str) -> object:
    before = len(errors)
    substituted = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal substituted
        name, default = match[1], match[2]
        if match[0] == "$$":
            return "$"
        if name is None:
            hint = "use ${NAME} or ${NAME:-default}, and $$ for a literal $"
            errors.append(FieldError(path, f"invalid variable reference in {text!r} ({hint})"))
            return ""
        substituted = True
        value = env.get(name)
        if default is not None and not value:
            return default[2:]
        if value is None:
            errors.append(FieldError(path, f"environment variable {name} is not set"))
            return ""
        return value

    result = _REF.sub(substitute, text)
    if len(errors) > before:
        return SKIP
    return EnvText(result) if substituted else result


# -- loading ---------------------------------------------------------------------------------


def _build(data: object, env: Mapping[str, str] | None, errors: list[FieldError]) -> Config:
    expanded = expand_env(data, os.environ if env is None else env, errors)
    config = build_config(expanded, errors)
    if errors:
        raise ConfigError(errors)
    return replace(config, config_hash=config_hash(config))


def config_from_mapping(data: object, env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed data (``${VAR}`` expanded from ``env``, default os.environ)."""
    return _build(data, env, [])


def parse_config(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text; raises ``ConfigError`` carrying every error found."""
    errors: list[FieldError] = []
    data = _load_yaml(text, errors)
    return _build(data, env, errors)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([FieldError(os.fspath(path), f"cannot read config: {reason}")]) from None
    return parse_config(text, env)


def resolve_config_path(arg: str | None, env: Mapping[str, str] | None = None) -> str:
    """``-c FILE``, else ``$ROUTER_CONFIG``, else ``./config.yaml``."""
    env = os.environ if env is None else env
    return arg or env.get("ROUTER_CONFIG") or DEFAULT_CONFIG_PATH


# -- the effective config as data ------------------------------------------------------------


def to_plain(value: object) -> Any:
    """JSON-able data with the dataclass field names; endpoints and addresses as strings."""
    if isinstance(value, Endpoint):
        return value.url
    if isinstance(value, HostPort):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(to_plain(item) for item in value)
    if isinstance(value, tuple | list):
        return [to_plain(item) for item in value]
    return value


def config_hash(config: Config) -> str:
    """sha256 hex of the canonical JSON of the effective config (secrets included)."""
    plain = to_plain(config)
    plain.pop("config_hash", None)
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def redacted_url(url: str) -> str:
    """The URL with any password replaced (also for multi-host sentinel URLs)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{hosts}"))


def redacted_dict(config: Config) -> dict[str, Any]:
    """The effective config for GET /admin/config: token and URL passwords replaced."""
    plain: dict[str, Any] = to_plain(config)
    if config.admin.token:
        plain["admin"]["token"] = REDACTED
    plain["state"]["url"] = redacted_url(config.state.url)
    if config.alerts.webhook is not None:
        plain["alerts"]["webhook"] = redacted_url(config.alerts.webhook)
    return plain


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_instance_id(config: Config) -> str:
    """``instance_id`` when set, else ``hostname:proxy-port``."""
    return config.instance_id or f"{socket.gethostname()}:{config.listen.proxy.port}"


def config_notes(config: Config) -> list[str]:
    """Things worth telling the operator about a valid config (not errors)."""
    notes: list[str] = []
    if not config.regions:
        notes.append(
            "no regions configured: the proxy answers 503 until regions are registered "
            "(POST /admin/regions)"
        )
    if not config.admin.token and not is_loopback(config.listen.admin.host):
        notes.append(
            f"listen.admin {config.listen.admin} is not a loopback address and admin.token "
            "is empty: `run` refuses to start like this"
        )
    notes.extend(certificate_notes(config.tls, time.time()))
    return notes
