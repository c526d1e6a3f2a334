#!/usr/bin/env bash
# soak.sh: the whole stack on this machine — a private Postgres, the shape
# server behind a fault gate, two proxies, readers (long polls, SSE,
# WebSockets) with keyrings and decrypting Shapes, writers, grants,
# revocations, rotations and re-encryption — for a while, with faults
# (proxy SIGKILL, shape-server and Postgres restarts, stalled and cut
# upstream responses, expired tokens, TRUNCATE) on a random schedule. It
# ends with one line
#
#	soak: C clients, W writes, F faults, lost L, duplicated D, converged K/C, heap growth G%
#
# and exits 1 when anything was lost, duplicated, leaked or did not
# converge. See bench/soak/main.go and bench/README.md.
#
# Usage: bench/soak.sh [-duration 60s] [-clients 100] [-seed S] [-v] [more: go run ./bench/soak -h]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each reader holds a few connections to the proxies, which hold as many
# upstream: raise the soft open-file limit as far as the hard limit allows.
hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -gt 65536 ]]; then hard=65536; fi
ulimit -n "$hard"

exec go run ./bench/soak "$@"
