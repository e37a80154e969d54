"""Side-by-side benchmark of region-router against nginx and HAProxy (see bench/README.md)."""
