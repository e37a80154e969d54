"""Config loading: the repo's config.yaml, every kind of error with its path, units, ${VAR}."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from router.config.check import check_command
from router.config.loader import (
    AccessLogConfig,
    Config,
    ConfigError,
    FieldError,
    access_log_path,
    config_from_mapping,
    config_hash,
    config_notes,
    load_config,
    parse_config,
    parse_region,
    parse_region_patch,
    redacted_dict,
)
from router.config.units import parse_duration, parse_percent, parse_size
from router.config.validate import Fields, ValidationError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
regions:
  - id: us-east-1
    endpoint: http://127.0.0.1:9101
  - id: eu-west-1
    endpoint: http://127.0.0.1:9102
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env or {})
    return [str(e) for e in info.value.errors]


def only_error(text: str, env: dict[str, str] | None = None) -> str:
    errors = errors_of(text, env)
    assert len(errors) == 1, errors
    return errors[0]


# -- the shipped configs -----------------------------------------------------------------------


def test_repo_config_loads() -> None:
    config = load_config(REPO / "config.yaml", env={})
    assert [r.id for r in config.regions] == ["us-east-1", "eu-west-1", "ap-south-1"]
    assert [r.endpoint.port for r in config.regions] == [9101, 9102, 9103]
    assert config.regions[0].labels["continent"] == "na"
    assert config.strategy == "latency"
    assert str(config.listen.proxy) == "127.0.0.1:8080"
    assert str(config.listen.admin) == "127.0.0.1:9901"
    assert config.health_check.interval_s == 1.0
    assert config.health_check.timeout_s == 0.5
    assert config.health_check.healthy_threshold == 2
    assert config.health_check.unhealthy_threshold == 2
    assert config.routes[0].match.path_prefix == "/api/ml/"
    assert config.routes[0].requires_artifact == "fraud-model"
    assert config.retries.on_statuses == {502, 503, 504}
    assert config.access_log is False
    assert config.state_dir == "./state"
    assert config.admin.token == ""
    assert len(config.config_hash) == 64


def test_packaged_demo_config_is_the_repo_config() -> None:
    packaged = REPO / "router" / "demo" / "demo_config.yaml"
    assert packaged.read_text() == (REPO / "config.yaml").read_text()


def test_admin_token_comes_from_the_environment() -> None:
    config = load_config(REPO / "config.yaml", env={"ROUTER_ADMIN_TOKEN": "s3cret"})
    assert config.admin.token == "s3cret"
    assert redacted_dict(config)["admin"]["token"] == "***"


def test_empty_file_is_all_defaults_with_a_note() -> None:
    config = parse_config("", {})
    assert config == Config(config_hash=config.config_hash)
    assert any("no regions" in note for note in config_notes(config))


# -- region fields ---------------------------------------------------------------------------


def test_region_defaults_and_endpoint_parsing() -> None:
    config = parse_config(
        "regions: [{id: a, endpoint: 'HTTPS://API.example.com/v1/'},"
        " {id: b, endpoint: 'http://[::1]:8000'}]",
        {},
    )
    a, b = config.regions
    assert (a.name, a.weight, a.priority, dict(a.labels)) == ("a", 100, 0, {})
    assert a.endpoint.url == "https://api.example.com/v1"
    assert (a.endpoint.scheme, a.endpoint.host, a.endpoint.port) == (
        "https",
        "api.example.com",
        443,
    )
    assert a.endpoint.base_path == "/v1"
    assert (b.endpoint.host, b.endpoint.port, b.endpoint.base_path) == ("::1", 8000, "")
    assert b.endpoint.host_header == "[::1]:8000"


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("{id: a, endpoint: 'ftp://x'}", "regions[0].endpoint: must be an http(s) URL"),
        ("{id: a, endpoint: 'http://'}", "regions[0].endpoint: must be an http(s) URL"),
        ("{id: a, endpoint: 'http://h/?q=1'}", "regions[0].endpoint: must not have a query"),
        ("{id: a, endpoint: 'http://h/#f'}", "regions[0].endpoint: must not have a query"),
        ("{id: a, endpoint: 'http://u:p@h'}", "regions[0].endpoint: must not contain credentials"),
        ("{id: A_1, endpoint: 'http://h'}", "regions[0].id: must match [a-z0-9-]{1,63}"),
        ("{id: '" + "a" * 64 + "', endpoint: 'http://h'}", "regions[0].id: must match"),
        ("{endpoint: 'http://h'}", "regions[0].id: required"),
        ("{id: a}", "regions[0].endpoint: required"),
        ("{id: a, endpoint: 'http://h', weight: 10001}", "regions[0].weight: expected an integer"),
        ("{id: a, endpoint: 'http://h', weight: '5'}", "regions[0].weight: expected an integer"),
        ("{id: a, endpoint: 'http://h', priority: -1}", "regions[0].priority: expected an integer"),
        ("{id: a, endpoint: 'http://h', labels: {tier: 1}}", "regions[0].labels.tier: expected a"),
        ("{id: a, endpoint: 'http://h', metrics_path: m}", "regions[0].metrics_path: must start"),
        ("{id: a, endpoint: 'http://h', wieght: 5}", "regions[0].wieght: unknown key"),
    ],
)
def test_region_errors_name_the_path(region: str, expected: str) -> None:
    assert only_error(f"regions: [{region}]").startswith(expected)


def test_duplicate_region_ids() -> None:
    error = only_error(MINIMAL + "  - id: us-east-1\n    endpoint: http://127.0.0.1:9103\n")
    assert error == "regions[2].id: duplicate region id 'us-east-1' (first at regions[0])"


def test_empty_regions_list_is_allowed() -> None:
    assert parse_config("regions: []", {}).regions == ()


def test_parse_region_for_admin_bodies() -> None:
    errors: list[FieldError] = []
    region = parse_region({"id": "eu-2", "endpoint": "http://10.0.0.2:80"}, "", errors)
    assert errors == []
    assert region is not None
    assert (region.id, region.name, region.endpoint.port) == ("eu-2", "eu-2", 80)

    assert parse_region({"id": "x", "endpoint": "nope", "bogus": 1}, "", errors) is None
    assert [str(e) for e in errors] == [
        "endpoint: must be an http(s) URL, got 'nope'",
        "bogus: unknown key",
    ]


def test_parse_region_patch_keeps_only_given_fields() -> None:
    errors: list[FieldError] = []
    assert parse_region_patch({"weight": 5, "labels": {"a": "b"}}, "", errors) == {
        "weight": 5,
        "labels": {"a": "b"},
    }
    assert errors == []
    parse_region_patch({"weight": -1, "endpoint": "http://h"}, "", errors)
    assert [e.path for e in errors] == ["weight", "endpoint"]


# -- the other sections ----------------------------------------------------------------------


SECTION_ERRORS = [
    (
        "health_check: {interval: '-1s'}",
        "health_check.interval: expected a duration > 0, got '-1s'",
    ),
    ("health_check: {interval: 1s, timeout: 2s}", "health_check.timeout: must not exceed interval"),
    ("health_check: {expected_status: '200-99'}", "health_check.expected_status: expected HTTP"),
    ("health_check: {jitter: 150%}", "health_check.jitter: expected a percentage 0..100"),
    ("outlier_detection: {max_ejection_percent: 101}", "outlier_detection.max_ejection_percent:"),
    ("failover: {panic_threshold: lots}", "failover.panic_threshold: expected a percentage"),
    ("retries: {on: [connect-failure, resett]}", "retries.on[1]: expected connect-failure, reset"),
    ("retries: {buffer_body_max: 1MB}", "retries.buffer_body_max: sizes use binary units"),
    ("retries: {max_retries: -1}", "retries.max_retries: expected an integer 0..10"),
    ("timeouts: {connect: 0}", "timeouts.connect: expected a duration > 0, got 0"),
    ("limits: {max_body: big}", "limits.max_body: expected a size like"),
    ("listen: {proxy: '8080'}", 'listen.proxy: expected "host:port"'),
    ("listen: {proxy: 'h:70000'}", "listen.proxy: port must be 0..65535"),
    ("listen: {proxy: ':80', admin: ':80'}", "listen.admin: same address as listen.proxy"),
    ("strategy: fastest", "strategy: expected one of latency, weighted"),
    ("state: {backend: etcd}", "state.backend: expected one of file, redis"),
    ("state: {quorum: most}", "state.quorum: expected majority or a percentage"),
    ("alerts: {webhook: 'ftp://x'}", "alerts.webhook: must be an http(s) URL"),
    ("alerts: {latency_p95: fast}", "alerts.latency_p95: expected a duration"),
    ("alerts: {error_rate: 5}", "alerts.error_rate: expected a fraction 0..1"),
    ("affinity: {cookie: a, header: b}", "affinity: set exactly one of cookie or header"),
    ("affinity: {}", "affinity: set exactly one of cookie or header"),
    ("reload: {watch: yes}", "reload.watch: expected true or false, got 'yes'"),
    ("shutdown_grace: soon", "shutdown_grace: expected a duration"),
    ("busy_poll: 20ms", "busy_poll: expected a duration <= 10ms, got '20ms'"),
    ("busy_poll: -1us", "busy_poll: expected a duration >= 0"),
    ("access_log: yes", "access_log: expected true or false, got 'yes'"),
    ("access_log: {}", "access_log.path: required"),
    ("access_log: {path: ''}", "access_log.path: must not be empty"),
    ("access_log: {path: a.log, pth: b}", "access_log.pth: unknown key"),
    ("replication: {concurrency: 0}", "replication.concurrency: expected an integer 1..1000"),
    ("instance_id: 7", "instance_id: expected a string (quote it), got 7"),
    ("regions: {a: 1}", "regions: expected a list, got a mapping"),
    ("retries: [1]", "retries: expected a mapping, got a list"),
]


@pytest.mark.parametrize(("text", "expected"), SECTION_ERRORS)
def test_section_errors_name_the_path(text: str, expected: str) -> None:
    assert only_error(text).startswith(expected)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("{match: {path_prefix: api}}", 'routes[0].match.path_prefix: must start with "/"'),
        ("{match: {}}", "routes[0].match: needs at least one of path_prefix, host"),
        ("{regions: [us-east-1]}", "routes[0].match: required"),
        ("{match: {path_prefix: /}, strategy: nope}", "routes[0].strategy: expected one of"),
        (
            "{match: {path_prefix: /}, regions: [us-east-2]}",
            "routes[0].regions[0]: unknown region 'us-east-2' (did you mean 'us-east-1'?)",
        ),
        ("{match: {path_prefix: /}, regions: [eu-west-1, eu-west-1]}", "routes[0].regions: lists"),
    ],
)
def test_route_errors(route: str, expected: str) -> None:
    assert only_error(MINIMAL + f"routes: [{route}]").startswith(expected)


def test_route_and_geo_parsing() -> None:
    config = parse_config(
        MINIMAL
        + "routes: [{match: {path_prefix: /api/, host: '*.Example.com'}, regions: [eu-west-1],"
        " artifact_fallback: 503}]\n"
        "geo: {proximity: {eu: [eu-west-1, us-east-1]}}\n"
        "affinity: {header: X-Session-ID}\n",
        {},
    )
    route = config.routes[0]
    assert (route.match.path_prefix, route.match.host) == ("/api/", "*.example.com")
    assert (route.regions, route.strategy, route.artifact_fallback) == (("eu-west-1",), None, "503")
    assert config.geo.proximity["eu"] == ("eu-west-1", "us-east-1")
    assert config.affinity is not None
    assert config.affinity.header == "X-Session-ID"


def test_geo_proximity_names_defined_regions() -> None:
    error = only_error(MINIMAL + "geo: {proximity: {eu: [eu-west-9]}}")
    assert error.startswith("geo.proximity.eu[0]: unknown region 'eu-west-9'")


def test_structured_values() -> None:
    config = parse_config(
        "retries: {on: [reset, '502', 429]}\n"
        "health_check: {expected_status: [204, '200-299,304']}\n"
        "outlier_detection: {max_ejection_percent: '30%'}\n"
        "state: {backend: redis, quorum: majority}\n"
        "alerts: {error_rate: 2%, webhook: 'https://hooks.example.com/x?y=1'}\n"
        "listen: {proxy: '[::1]:0', admin: ':9901'}\n",
        {},
    )
    assert config.retries.on_conditions == {"reset"}
    assert config.retries.on_statuses == {502, 429}
    assert config.health_check.expected_status == ((200, 299), (204, 204), (304, 304))
    assert config.outlier_detection.max_ejection_percent == 30.0
    assert config.state.quorum_percent is None
    assert parse_config("state: {quorum: 60%}", {}).state.quorum_percent == 60.0
    assert config.alerts.error_rate == pytest.approx(0.02)
    assert (config.listen.proxy.host, config.listen.proxy.port) == ("::1", 0)
    assert str(config.listen.admin) == "0.0.0.0:9901"


def test_yaml_1_1_booleans_are_not_booleans() -> None:
    # `on:` must stay a key (YAML 1.1 would read it as True) and `no` a label value.
    config = parse_config(
        "retries: {on: [timeout]}\nregions: [{id: a, endpoint: 'http://h', labels: {geo: no}}]",
        {},
    )
    assert config.retries.on_conditions == {"timeout"}
    assert config.regions[0].labels["geo"] == "no"


# -- error reporting -------------------------------------------------------------------------


def test_all_errors_are_reported_at_once() -> None:
    errors = errors_of(
        "strategy: fastest\n"
        "regions: [{id: a, endpoint: 'ftp://x', weight: -1}]\n"
        "health_check: {interval: 1s, timeout: 5s}\n"
        "retries: {retrys: 3}\n"
    )
    assert [e.split(":")[0] for e in errors] == [
        "strategy",
        "regions[0].endpoint",
        "regions[0].weight",
        "health_check.timeout",
        "retries.retrys",
    ]


def test_unknown_keys_suggest_the_close_match() -> None:
    error = only_error("helth_check: {}")
    assert error == "helth_check: unknown key (did you mean 'health_check'?)"
    assert only_error("retries: {max_retrie: 1}") == (
        "retries.max_retrie: unknown key (did you mean 'max_retries'?)"
    )
    assert only_error("retries: {retrys: 1}").startswith("retries.retrys: unknown key")


def test_yaml_syntax_errors_carry_line_and_column() -> None:
    error = only_error("listen:\n  proxy: a\n admin: b\n")
    assert error.startswith("line 3, column ")
    assert "YAML" in error


def test_duplicate_yaml_keys_are_errors() -> None:
    assert only_error("strategy: latency\nstrategy: weighted\n") == (
        "line 2, column 1: duplicate key 'strategy'"
    )


def test_validation_error_str_lists_every_error() -> None:
    error = ValidationError([FieldError("a.b", "bad"), FieldError("c", "worse")])
    assert str(error) == "a.b: bad\nc: worse"
    assert issubclass(ConfigError, ValidationError)


def test_fields_reader_for_request_bodies() -> None:
    errors: list[FieldError] = []
    with Fields({"drain": "30s", "reason": 5, "extra": 1}, "", errors) as f:
        assert f.duration("drain", 0.0) == 30.0
        assert f.text("reason", "") == ""
        assert f.size("missing", 7) == 7
    assert [str(e) for e in errors] == [
        "reason: expected a string (quote it), got 5",
        "extra: unknown key",
    ]


# -- ${VAR} ----------------------------------------------------------------------------------


def test_env_expansion_set_unset_default() -> None:
    text = "admin: {token: '${TOKEN}'}\nstate_dir: '${DIR:-/var/lib/rr}'\n"
    config = parse_config(text, {"TOKEN": "abc"})
    assert (config.admin.token, config.state_dir) == ("abc", "/var/lib/rr")
    config = parse_config(text, {"TOKEN": "abc", "DIR": "/tmp/s"})
    assert config.state_dir == "/tmp/s"
    assert only_error(text) == "admin.token: environment variable TOKEN is not set"


def test_env_expansion_in_lists_numbers_and_escapes() -> None:
    text = (
        "regions:\n  - id: a\n    endpoint: 'http://${HOST}:${PORT}'\n    weight: ${W:-3}\n"
        "admin: {token: 'x$$y'}\naccess_log: ${LOG}\n"
    )
    config = parse_config(text, {"HOST": "10.0.0.1", "PORT": "81", "LOG": "false"})
    assert config.regions[0].endpoint.url == "http://10.0.0.1:81"
    assert config.regions[0].weight == 3
    assert config.admin.token == "x$y"
    assert config.access_log is False
    assert only_error(text, {"HOST": "h", "LOG": "true"}) == (
        "regions[0].endpoint: environment variable PORT is not set"
    )
    assert only_error("state_dir: '${BROKEN'").startswith("state_dir: invalid variable reference")


# -- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200us", 0.0002), ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0),
     ("1m30s", 90.0), ("1.5s", 1.5), (3, 3.0), (0.5, 0.5), ("10", 10.0), ("-1s", -1.0)],
)  # fmt: skip
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512B", 512), ("16KiB", 16384), ("1MiB", 1048576), ("2GiB", 2 * 1024**3),
     ("1.5KiB", 1536), (1024, 1024), ("100", 100)],
)  # fmt: skip
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "percent"), [("50%", 50.0), (50, 50.0), ("12.5%", 12.5), (0, 0.0)]
)
def test_parse_percent(text: object, percent: float) -> None:
    assert parse_percent(text) == percent


@pytest.mark.parametrize(
    ("parse", "value"),
    [(parse_duration, "5x"), (parse_duration, True), (parse_duration, "s"),
     (parse_size, "1MB"), (parse_size, -1), (parse_size, "lots"), (parse_size, 1.5),
     (parse_percent, "150%"), (parse_percent, -1), (parse_percent, "half")],
)  # fmt: skip
def test_unit_parsers_reject(parse: object, value: object) -> None:
    with pytest.raises(ValueError):
        parse(value)  # type: ignore[operator]  # the parametrized parsers are callables


# -- hash and redaction ----------------------------------------------------------------------


def test_hash_ignores_key_order_and_formatting() -> None:
    a = parse_config(MINIMAL + "health_check: {interval: 5s, timeout: 2s}\n", {})
    b = parse_config(
        "health_check:\n  timeout: 2000ms\n  interval: 5\n"
        "regions:\n"
        "  - {endpoint: 'http://127.0.0.1:9101/', id: us-east-1, weight: 100}\n"
        "  - {endpoint: 'http://127.0.0.1:9102', id: eu-west-1}\n",
        {},
    )
    assert a.config_hash == b.config_hash == config_hash(a)


def test_hash_changes_with_the_config() -> None:
    a = parse_config(MINIMAL, {})
    b = parse_config(MINIMAL.replace("9102", "9102\n    weight: 50"), {})
    assert b.regions[1].weight == 50
    assert a.config_hash != b.config_hash


def test_config_from_mapping_matches_yaml() -> None:
    data = {"regions": [{"id": "us-east-1", "endpoint": "http://127.0.0.1:9101"},
                        {"id": "eu-west-1", "endpoint": "http://127.0.0.1:9102"}]}  # fmt: skip
    assert config_from_mapping(data, {}).config_hash == parse_config(MINIMAL, {}).config_hash


def test_redacted_dict_hides_secrets() -> None:
    config = parse_config(
        "admin: {token: s3cret}\nstate: {backend: redis, url: 'redis://:pw@db:6379/0'}", {}
    )
    plain = redacted_dict(config)
    assert plain["admin"]["token"] == "***"
    assert plain["state"]["url"] == "redis://:***@db:6379/0"
    assert plain["config_hash"] == config.config_hash
    assert "s3cret" not in repr(plain)
    assert redacted_dict(parse_config("", {}))["admin"]["token"] == ""


# -- check -----------------------------------------------------------------------------------


def test_check_command_ok_and_errors(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_command(REPO / "config.yaml", env={}, out=out, err=err) == 0
    assert out.getvalue().startswith("OK: 3 regions, strategy latency, hash ")
    assert err.getvalue() == ""

    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [{id: a, endpoint: 'ftp://x'}]\nstrategy: nope\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_command(bad, env={}, out=out, err=err) == 1
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("strategy: expected one of")
    assert lines[1].startswith("regions[0].endpoint: must be an http(s) URL")

    out, err = io.StringIO(), io.StringIO()
    assert check_command(tmp_path / "missing.yaml", env={}, out=out, err=err) == 1
    assert "cannot read config" in err.getvalue()


def test_docs_full_example_is_valid() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    example = doc.split("## Full example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, {})
    assert [r.id for r in config.regions] == ["us-east-1", "eu-west-1", "ap-south-1"]
    assert config.regions[1].weight == 100
    assert config.regions[1].endpoint.base_path == "/v1"
    assert config.state.url == "redis://127.0.0.1:6379/0"


def test_state_url_may_name_redis_sentinels() -> None:
    ok = parse_config(
        "state: {backend: redis, url: 'redis+sentinel://:pw@s1:26379,s2/mymaster/1'}", env={}
    )
    assert ok.state.url.startswith("redis+sentinel://")
    assert redacted_dict(ok)["state"]["url"] == "redis+sentinel://:***@s1:26379,s2/mymaster/1"
    assert errors_of("state: {backend: redis, url: 'redis+sentinel://s1:26379'}") == [
        "state.url: name the Sentinel service: redis+sentinel://host:26379/<service>"
    ]


def test_access_log_is_a_flag_or_a_file() -> None:
    assert parse_config(MINIMAL, {}).access_log is True  # stdout
    assert access_log_path(parse_config(MINIMAL, {})) is None
    config = parse_config(MINIMAL + "access_log: {path: /var/log/router/access.log}\n", {})
    assert config.access_log == AccessLogConfig(path="/var/log/router/access.log")
    assert access_log_path(config) == "/var/log/router/access.log"
    assert redacted_dict(config)["access_log"] == {"path": "/var/log/router/access.log"}
    assert config.config_hash != parse_config(MINIMAL, {}).config_hash
