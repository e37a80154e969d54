"""region-router's control plane: the admin HTTP API and what it drives."""
