"""exact-gateway: a resilient reverse-proxy sidecar for the EXACT dental practice API."""

__version__ = "0.1.0"
