"""Several instances as one router: coordination on Redis, health quorum, job leases.

May import: replication, monitoring, workers, ``router.runtime`` and everything below.
"""
