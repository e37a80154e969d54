"""The control plane: ``Control`` (core.py: what the admin API drives), the synchronous
decisions it applies under its lock (remote.py: other instances' changes; reload.py:
``plan_reload``), removals that drain first (removal.py), manual failover operations
(failover.py), the config file watcher (watch.py), the TLS file watcher (certwatch.py) and
the documents persisted in ``state_dir`` (persist.py).

May import: ``router.cluster`` and everything below it. ``admin/`` is its HTTP face.
"""
