#!/usr/bin/env bash
# electrictest.sh: electrictest's server benchmarks against a real
# PostgreSQL, with a summary of the figures. See bench/README.md.
#
#   BenchmarkSnapshot          initial sync of a 100k-row shape (snapshot
#                              query + reading every chunk): rows/s, MB/s
#   BenchmarkCommitToResponse  committed INSERT → each waiting live poller
#                              has read its response, 1 and 1,000 pollers:
#                              p50 and p99 in ms
#
# Usage: bench/electrictest.sh [go test flags, e.g. -count 3 -benchtime 5x]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go run ./internal/pgtest/cmd/withpg -- \
	go test -run '^$' -bench '^(BenchmarkSnapshot|BenchmarkCommitToResponse)$' -benchmem -timeout 30m "$@" ./electrictest/ |
	tee "$out"

# One summary line per benchmark result: its name and the figures that
# matter (the custom metrics; ns/op is meaningless for CommitToResponse).
awk '
	/^cpu:/ { sub(/^cpu: */, ""); sub(/ +$/, ""); cpu = $0 }
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		line = ""
		for (i = 3; i < NF; i += 2) {
			u = $(i + 1)
			if (u == "rows/s" || u == "MB/s" || u == "p50-ms" || u == "p99-ms")
				line = line sprintf("  %12s %s", $i, u)
		}
		rows[++n] = sprintf("  %-46s%s", name, line)
	}
	END {
		if (n == 0) { print "electrictest.sh: no benchmark results" > "/dev/stderr"; exit 1 }
		printf "\nelectrictest benchmarks (one run on %s):\n", cpu
		for (i = 1; i <= n; i++) print rows[i]
	}
' "$out"
