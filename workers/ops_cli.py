"""(placeholder: filled in by its issue)"""

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this module's subcommands to the selftune-ingest parser."""
    del sub


__all__ = ["argparse", "register"]
