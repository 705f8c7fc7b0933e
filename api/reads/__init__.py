"""The read endpoints: a push's status, improvement signals (and their consumption), skills.

They answer from Postgres (api/db.py) and take their query parameters and
cursors from `params` and `keyset`; the push path never imports them.
"""
