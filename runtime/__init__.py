"""Process-wide runtime: settings read once from the environment, logging, heap tuning, the version."""
