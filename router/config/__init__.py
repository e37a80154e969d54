"""The configuration: YAML text to a validated, frozen ``Config`` (CONTRACT sections 3 and 10).

Owns parsing, units, per-field validation with field paths, the config diff of a reload and
the ``check`` command. The bottom layer: imports nothing of ``router`` but ``router.errors``.
"""
