"""The only package that talks to MongoDB. One module per collection; `Store` bundles them."""

from app.store.db import Clock, Store, connect

__all__ = ["Clock", "Store", "connect"]
