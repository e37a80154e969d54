"""``region-router demo``: simulated regions (regions.py), the script of what goes down when
(script.py), the live table (view.py) and what it reads from the router (observe.py), the run
itself (run.py) and the packaged demo config.

May import: ``router.service`` and everything below it.
"""
