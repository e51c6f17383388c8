"""kv-transition: what KV-cache compression really costs."""

__version__ = "0.1.0"
