#!/usr/bin/env bash
# For `make run`: make sure a "dev" workspace exists, print a fresh API key for it and keep it in
# .data/dev/api-key (readable by its owner only), so `KEY=$(cat .data/dev/api-key)` finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=.venv/bin/selftune-ingest
$cli workspace list | grep -qP '\tdev\t' || $cli workspace create dev >/dev/null
key=$($cli key create dev 2>/dev/null | cut -f2)
keyfile=${DATA_DIR:-.data/dev}/api-key
mkdir -p "$(dirname "$keyfile")"
(umask 077 && printf '%s\n' "$key" > "$keyfile")
cat <<TXT

  selftune ingest is starting on http://127.0.0.1:${PORT:-8000}
  dev API key: $key (also in $keyfile: KEY=\$(cat $keyfile))

  curl -X POST http://127.0.0.1:${PORT:-8000}/v2/push -H "Authorization: Bearer $key" \\
       -H 'Content-Type: application/json' -d '{"data": {}}'

  Point the CLI at it: SELFTUNE_ALPHA_ENDPOINT=http://127.0.0.1:${PORT:-8000}/api/v1/push

TXT
