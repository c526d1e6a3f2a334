# Test entry points. CI runs .ci/run, which runs `make test`.
# withpg starts one private PostgreSQL (or uses DATABASE_URL) for all packages.

.PHONY: test bench build

test:
	go vet ./...
	go run ./internal/pgtest/cmd/withpg -- go test -count=1 -timeout 20m ./...

# bench runs every package's benchmarks (electrictest's through
# bench/electrictest.sh, which summarises them), then the comparison with the
# official TypeScript client. See bench/README.md; compare ratios only within
# one run.
bench:
	go run ./internal/pgtest/cmd/withpg -- go test -run '^$$' -bench . -benchmem $$(go list ./... | grep -v '/electrictest$$')
	bench/electrictest.sh
	bench/client-decode.sh

build:
	go build -o bin/shapeseal ./cmd/shapeseal
