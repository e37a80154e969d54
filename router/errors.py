"""The router's error tree; each proxy-made error knows its HTTP status and wire code.

    RouterError                  every error the router raises on purpose
    ├── ValidationError          field errors with paths (config/validate.py; 400 in admin)
    │   └── ConfigError          an invalid config file: nothing applied
    ├── RegistryError            registry mutations that cannot apply
    │   ├── NotFound             an unknown id (404 in the admin API)
    │   │   └── UnknownRegion    no region with that id
    │   └── RegionConflict       duplicate id, config-owned region, bad state change (409)
    │       └── StoreConflict    an entry another instance created first (store/files.py)
    ├── StoreWriteError          state not written, nothing changed (store/files.py; 503)
    ├── StateFormatError         state written by a newer version: refused (store/files.py)
    ├── TransferError            one replication request failed (replication/transfer.py)
    ├── SpoolError               the local spool file failed (replication/transfer.py)
    ├── JobFailed                a replication job ends failed (replication/copier.py)
    ├── WorkerStartError         a worker process did not come up (workers/supervisor.py)
    ├── ResolveError             an endpoint name has no address (proxy/dns.py; also an OSError)
    ├── StreamError              a malformed HTTP/2 request: stream reset (proxy/h2request.py)
    └── ProxyError               errors the proxy answers itself, rendered as JSON
        ├── BadRequest           400 malformed request
        ├── BodyTooLarge         413
        ├── HeadersTooLarge      431
        ├── NoEligibleRegion     503 with Retry-After
        ├── UpstreamConnectError 502 (unreachable / reset after retries)
        └── UpstreamTimeout      504

The classes outside this module live with the code that raises them; they derive from
``RouterError`` here (tests/test_errors.py checks that every exception class of
``router/`` is in this tree and in this picture).
``ResolveError`` is also an ``OSError``, so a failed lookup takes the connect-failure path
like any socket error.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


class ResolveError(RouterError, OSError):
    """No address for a name (an OSError, so a request counts it as a connect failure).

    Raised by router/proxy/dns.py; defined here because that module is compiled by mypyc,
    which cannot compile a class with two built-in bases."""


class RegistryError(RouterError):
    pass


class NotFound(RegistryError):
    """An id the caller named does not exist (404 in the admin API)."""


class UnknownRegion(NotFound):
    def __init__(self, region_id: str) -> None:
        super().__init__(f"no region with id {region_id!r}")
        self.region_id = region_id


class RegionConflict(RegistryError):
    pass


class ProxyError(RouterError):
    status = 500
    code = "internal"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class BodyTooLarge(ProxyError):
    status = 413
    code = "body_too_large"


class HeadersTooLarge(ProxyError):
    status = 431
    code = "headers_too_large"


class NoEligibleRegion(ProxyError):
    status = 503
    code = "no_eligible_region"


class UpstreamConnectError(ProxyError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"
