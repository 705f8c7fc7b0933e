"""The ingest queue on RQ: every reach into RQ's internals (`rq_compat`) and the queue's snapshot (`queue_state`).

The batch itself (what a job carries, its names and Redis keys of our own) is
`schema.queue`, which knows nothing of RQ.
"""
