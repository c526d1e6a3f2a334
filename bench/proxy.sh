#!/usr/bin/env bash
# proxy.sh: shapeseal's proxy vs going direct to Electric vs an Express
# proxy written as Electric's docs show (bench/peers/express), in one run:
# added latency of small live responses, throughput and memory on a 50 MB
# snapshot, and live polls held at once with memory per poll. Prints
# ratios, and ends with one summary line:
#
#	proxy: throughput R× direct, added p50 A µs, added p99 B µs, Express/shapeseal RSS M×
#
# (R and the latencies for `shapeseal proxy`). See bench/README.md.
#
# Usage: bench/proxy.sh [-latency-n 2000] [-snapshot-mb 50] [-rounds 5] [-polls 10000] [-parts abc]
#
# One WebSocket with 100 shapes vs 100 long-polls is BenchmarkWS100Shapes
# in ./proxy (see bench/README.md); BENCH_WS=1 runs it after the above.
#
# A private PostgreSQL (or DATABASE_URL) backs electrictest; Node.js 18+
# and npm must be installed (express is installed into
# bench/peers/express/node_modules with npm ci, from its package-lock.json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Up to two sockets per held poll in the proxy (client and upstream side),
# one in proxybench's client process and one in its upstream: raise the
# soft open-file limit as far as the hard limit allows (proxybench holds
# fewer polls if it must).
hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -gt 65536 ]]; then hard=65536; fi
ulimit -n "$hard"

peer=bench/peers/express
if [[ ! -f $peer/node_modules/.package-lock.json || $peer/package-lock.json -nt $peer/node_modules/.package-lock.json ]]; then
	(cd "$peer" && npm ci --no-audit --no-fund --ignore-scripts >&2)
fi
# The one-line summary is printed last, after everything else.
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
go run ./internal/pgtest/cmd/withpg -- go run ./bench/proxybench -summary-file "$summary" "$@"
if [[ ${BENCH_WS:-} == 1 ]]; then
	echo
	echo "one WebSocket with 100 shapes vs 100 HTTP long-polls (BenchmarkWS100Shapes):"
	go run ./internal/pgtest/cmd/withpg -- go test -run '^$' -bench BenchmarkWS100Shapes -benchtime 20x ./proxy/
fi
echo
cat "$summary"
