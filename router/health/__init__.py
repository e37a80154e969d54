"""Health: active probes and passive outlier detection, reporting verdicts to the registry.

May import: ``router.state``, ``router.config``, ``router.errors``.
"""
