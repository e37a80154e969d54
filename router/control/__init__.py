"""The control plane: ``Control`` (what the admin API drives), reload, other instances'
changes applied here, and the documents persisted in ``state_dir``.

May import: ``router.cluster`` and everything below it. ``admin/`` is its HTTP face.
"""
