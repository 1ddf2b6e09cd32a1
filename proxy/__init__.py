"""canaryproxy: an HTTP reverse proxy that splits traffic between versions and runs canaries."""

__version__ = "0.1.0"
