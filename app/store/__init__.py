"""The only package that talks to MongoDB. One module per collection; `Store` bundles them."""

from .db import Clock, Store, connect

__all__ = ["Clock", "Store", "connect"]
