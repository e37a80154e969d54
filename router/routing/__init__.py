"""Routing decisions: route matching, strategies, the per-process load table and ``explain``.

Pure functions and small objects over a snapshot; no I/O. May import: ``router.state``,
``router.config``, ``router.errors``.
"""
