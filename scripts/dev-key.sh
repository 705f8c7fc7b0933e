#!/usr/bin/env bash
# For `make run`: make sure a "dev" workspace exists and print a fresh API key for it.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=.venv/bin/selftune-ingest
$cli workspace list | grep -qP '\tdev\t' || $cli workspace create dev >/dev/null
key=$($cli key create dev 2>/dev/null | cut -f2)
cat <<TXT

  selftune ingest is starting on http://127.0.0.1:${PORT:-8000}
  dev API key (shown once): $key

  curl -X POST http://127.0.0.1:${PORT:-8000}/v2/push -H "Authorization: Bearer $key" \\
       -H 'Content-Type: application/json' -d '{"data": {}}'

  Point the CLI at it: SELFTUNE_ALPHA_ENDPOINT=http://127.0.0.1:${PORT:-8000}/api/v1/push

TXT
