"""Region state: the registry (the one owner of live region state; registry.py, its records
in records.py), the immutable snapshot it builds for the hot path (build.py, snapshot.py),
tiers, artifact-aware candidates and failover operations.

Synchronous and I/O-free. May import: ``router.config``, ``router.errors``.
"""
