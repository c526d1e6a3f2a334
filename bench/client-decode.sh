#!/usr/bin/env bash
# client-decode.sh: Go client vs the official TypeScript client
# (@electric-sql/client), decoding the same 100k-row shape log, in one run.
# Prints rows/s for both and the ratio Go/TS. See bench/README.md.
#
# Usage: bench/client-decode.sh [-rows N] [-count N] [-benchtime D] [-keep DIR]
#
# A private PostgreSQL (or DATABASE_URL) serves the table the body is made
# from; Node.js 18+ and npm must be installed (the client is installed into
# electrictest/interop/node_modules by internal/nodetest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec go run ./internal/pgtest/cmd/withpg -- go run ./bench/clientdecode "$@"
