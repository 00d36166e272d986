"""The serving shim: a FastAPI app over what the pipeline published (Redis, the index).

It imports the core, the Redis key schema and the index reader only; no stage imports
it, and it never loads torch, Spark or the index builder.
"""

import os

# One BLAS thread per worker process, set before numpy loads its BLAS: a request's
# matrix products are small (200 × 256), and OpenBLAS's default thread pool per process
# spent more CPU spinning than computing (1.9 cores for one worker at 400 req/s); a
# server gets its parallelism from worker processes. An operator's own setting wins.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
