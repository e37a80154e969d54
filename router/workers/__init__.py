"""Multi-process mode: the supervisor, each worker, and the channel between them.

May import: ``router.runtime`` and everything below it.
"""
