"""The serving shim: a FastAPI app over what the pipeline published (Redis, the index).

It imports the core, the Redis key schema and the index reader only; no stage imports
it, and it never loads torch, Spark or the index builder.
"""
