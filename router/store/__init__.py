"""Persistent state: the ``StateStore`` interface, the file store and the Redis store.

Documents, not live objects: the control plane decides what they hold. May import:
``router.config``, ``router.errors``, ``router.metrics`` (the Redis store's gauges).
"""
