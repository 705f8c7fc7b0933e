"""Postgres: the migrations runner, API keys (hashing, issuing, their Redis mirror's names), shared SQL."""
