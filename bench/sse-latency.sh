#!/usr/bin/env bash
# sse-latency.sh: commit-to-client latency of the Go client's live modes,
# SSE (Options.LiveSSE) against long polling, with 1 and 1,000 followers,
# against electrictest over a real PostgreSQL (BenchmarkLiveLatency in
# client/). See bench/README.md.
#
# Usage: bench/sse-latency.sh [go test flags, e.g. -count 3 -benchtime 200x]
#
# -benchtime is the number of rounds (one INSERT per transport each);
# 100x unless given. Ends with one line:
#
#   sse-latency: 1 follower p50 X× p99 Y×, 1000 followers p50 X× p99 Y×
#
# each figure SSE's latency over long polling's (below 1: SSE is faster),
# the median over -count runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
args=("$@")
case " $* " in
*" -benchtime"*) ;;
*) args=(-benchtime 100x "${args[@]}") ;;
esac
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go run ./internal/pgtest/cmd/withpg -- \
	go test -run '^$' -bench '^BenchmarkLiveLatency$' -timeout 30m "${args[@]}" ./client/ |
	tee "$out"

awk '
	/^cpu:/ { sub(/^cpu: */, ""); sub(/ +$/, ""); cpu = $0 }
	/^BenchmarkLiveLatency\/followers=/ {
		n = $1; sub(/^BenchmarkLiveLatency\/followers=/, "", n); sub(/-[0-9]+$/, "", n)
		for (i = 3; i < NF; i += 2) v[n, $(i + 1), ++cnt[n, $(i + 1)]] = $i
		if (!(n in seen)) { seen[n] = 1; order[++k] = n }
	}
	function median(n, u,    c, i, j, t, a) {
		c = cnt[n, u]
		if (c == 0) return "-"
		for (i = 1; i <= c; i++) a[i] = v[n, u, i]
		for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
		return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
	}
	END {
		if (k == 0) { print "sse-latency.sh: no benchmark results" > "/dev/stderr"; exit 1 }
		printf "\ncommit-to-Shape latency, medians of %d run(s) on %s (ms):\n", cnt[order[1], "p50-ratio"], cpu
		printf "  %-10s %10s %10s %10s %10s %8s\n", "followers", "SSE p50", "SSE p99", "poll p50", "poll p99", "early-%"
		for (i = 1; i <= k; i++) {
			n = order[i]
			printf "  %-10s %10.3f %10.3f %10.3f %10.3f %8.2f\n", n, median(n, "sse-p50-ms"), median(n, "sse-p99-ms"),
				median(n, "lp-p50-ms"), median(n, "lp-p99-ms"), median(n, "early-%")
		}
		line = "sse-latency:"
		for (i = 1; i <= k; i++) {
			n = order[i]
			line = line sprintf("%s %s follower%s p50 %.2f× p99 %.2f×", i > 1 ? "," : "", n, n == 1 ? "" : "s",
				median(n, "p50-ratio"), median(n, "p99-ratio"))
		}
		print line
	}
' "$out"
