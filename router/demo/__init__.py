"""``region-router demo``: simulated regions, the live table, and the packaged demo config.

May import: ``router.service`` and everything below it.
"""
