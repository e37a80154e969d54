"""The data plane's hot path: client and upstream connections, the exchange between them,
retries, header rules, the listener and the access log.

May import: ``router.routing``, ``router.state``, ``router.config``, ``router.metrics``,
``router.errors``. Never health, store, control, cluster or admin code: the proxy is handed
what it needs (a snapshot holder, a load table) by ``router.runtime``.
"""
