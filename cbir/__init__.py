"""cbir: distributed content-based image retrieval (shared core).

The core never imports grpc or pyspark outside ``cbir.rpc`` and ``cbir.cli``; the servers and
jobs depend on it, never the other way round.
"""

__version__ = "0.1.0"
