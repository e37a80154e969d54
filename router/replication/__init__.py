"""Replication of artifacts between regions: jobs, transfer, verification, inventory.

May import: ``router.runtime`` and everything below it.
"""
