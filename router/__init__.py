"""region-router: a multi-region HTTP reverse proxy with health-driven failover.

One subpackage per concern, layered (docs/architecture.md; enforced by the import-linter
contracts in pyproject.toml): config, state, routing, then proxy | health | store, runtime,
replication | monitoring | workers, cluster, control, and on top the composition root
``router.service`` (the only module that imports ``admin/``), ``router.demo`` and
``router.cli``. ``router.errors`` and ``router.metrics`` sit below everything.
"""

__version__ = "0.1.0"
