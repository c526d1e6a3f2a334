#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s), one
# after the other, and reports the crashers found. A crasher is kept by Go
# under the package's testdata/fuzz/FuzzName/, where it becomes a regression
# case of the ordinary tests: fix the bug, keep the file.
#
#   bench/fuzz.sh [-fuzztime 30s] [-run REGEXP]
#
# Exits 1 when any target fails. Targets that need Postgres run under the
# same private cluster as make test.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=30s
only=.
while [ $# -gt 0 ]; do
	case "$1" in
	-fuzztime) fuzztime="$2"; shift 2 ;;
	-run) only="$2"; shift 2 ;;
	*) echo "usage: bench/fuzz.sh [-fuzztime 30s] [-run REGEXP]" >&2; exit 2 ;;
	esac
done

# package directory and target, one per line
targets=$(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . |
	sed -E 's|^\./(.*)/[^/]*_test\.go:[0-9]+:func (Fuzz[A-Za-z0-9_]*)\(.*|\1 \2|' |
	grep -v '^bench' | sort -u | grep -E "$only")

failed=()
n=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
while read -r dir name; do
	[ -n "$dir" ] || continue
	n=$((n + 1))
	echo "== ./$dir $name ($fuzztime)"
	if go run ./internal/pgtest/cmd/withpg -- go test "./$dir" -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" >"$out" 2>&1; then
		tail -1 "$out"
	else
		# Why: the failure, without the progress lines.
		grep -v '^fuzz: elapsed' "$out" | tail -40
		failed+=("./$dir $name")
	fi
	# A failing input that Go kept.
	if [ -n "$(git status --porcelain -- "$dir/testdata/fuzz/$name" 2>/dev/null)" ]; then
		failed+=("./$dir $name (crasher in $dir/testdata/fuzz/$name)")
	fi
done <<<"$targets"

if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz: %d targets, %d failed:\n' "$n" "${#failed[@]}"
	printf '  %s\n' "${failed[@]}"
	exit 1
fi
echo "fuzz: $n targets, no crasher"
