"""The ops command line, `selftune-ingest` (ops/cli.py), and what only it does: workspaces and keys,
device enrollments, failed batches, replay, quarantine and a push's story."""
