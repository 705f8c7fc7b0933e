"""`python -m ops`: the same as `selftune-ingest`."""

import sys

from ops.cli import main

sys.exit(main())
