"""Persistent state: the ``StateStore`` interface, the file store and the Redis store.

May import: ``router.config``, ``router.errors`` (documents, not live objects).
"""
