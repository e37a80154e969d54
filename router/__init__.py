"""region-router: a multi-region HTTP reverse proxy (the data plane package)."""

__version__ = "0.1.0"
