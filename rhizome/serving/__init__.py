"""Serving a program over HTTP.

The FastAPI app (``app``), the ASGI middleware in front of it (metrics, auth,
body limits), the Prometheus counters and the typed request bodies.
"""

__all__: tuple[str, ...] = ()
