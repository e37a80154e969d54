"""Several instances as one router: ``Cluster`` (core.py), the health quorum, job leases and
their coordination keys on the shared Redis store.

Applying other instances' changes is not here but in ``router.control`` (it owns the write
lock). May import: ``router.replication``, ``router.runtime``, ``router.store`` and
everything below them; never ``router.control``.
"""
