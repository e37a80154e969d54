"""Region state: the registry (the one owner of live region state), the immutable snapshot
it builds for the hot path, tiers, artifact-aware candidates and failover operations.

Synchronous and I/O-free. May import: ``router.config``, ``router.errors``.
"""
