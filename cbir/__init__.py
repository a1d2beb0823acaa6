"""cbir: distributed content-based image retrieval (shared core).

The core never imports grpc or pyspark outside ``cbir.rpc`` and ``cbir.cli``; the servers and
jobs depend on it, never the other way round.
"""

import os

__version__ = "0.1.0"

# Arrow allocates through glibc rather than its bundled mimalloc, which kept every freed chunk
# and bucket of a shard build in RSS (measured: a 200k-vector PQ shard task peaked at  5.6x its
# index with mimalloc, 2.9x with glibc; docs/build_index.md). pyarrow reads this once, when it
# loads, so it is set here, in the package every cbir process imports first; Spark's Python
# workers also get it from spark.executorEnv (jobs/spark_session.py). A value set outside wins.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
os.environ.setdefault(ARROW_POOL_ENV, "system")
