"""The api's local durable spool (SQLite): where a push waits while Redis cannot take it.

Its own package because two processes read it: the api writes and drains it, and
the ops command line reports it (`selftune-ingest status`).
"""
