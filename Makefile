# Test entry points. CI runs .ci/run, which runs `make test`.
# withpg starts one private PostgreSQL (or uses DATABASE_URL) for all packages;
# tests that need Vault start bin/vault (internal/vaulttest).

.PHONY: test bench build fuzz soak

test: bin/vault
	go vet ./...
	go run ./internal/pgtest/cmd/withpg -- go test -count=1 -timeout 20m ./...

# bench runs every package's benchmarks (electrictest's through
# bench/electrictest.sh, which summarises them; the client's SSE vs long-poll
# latency through bench/sse-latency.sh), then the comparison with the
# official TypeScript client and the proxy's comparison with direct access and
# an Express proxy. See bench/README.md; compare ratios only within one run.
bench:
	go run ./internal/pgtest/cmd/withpg -- go test -run '^$$' -bench . -skip '^BenchmarkLiveLatency$$' -benchmem $$(go list ./... | grep -v '/electrictest$$')
	bench/electrictest.sh
	bench/sse-latency.sh
	bench/client-decode.sh
	bench/proxy.sh

# fuzz runs every fuzz target for FUZZTIME each (bench/fuzz.sh) and fails
# on a crasher, which Go keeps under the package's testdata/fuzz.
FUZZTIME ?= 30s
fuzz:
	bench/fuzz.sh -fuzztime $(FUZZTIME)

# soak runs the whole stack under faults for SOAKTIME (bench/soak.sh; see
# bench/README.md) and fails when a reader lost, repeated or leaked a row.
SOAKTIME ?= 60s
soak:
	bench/soak.sh -duration $(SOAKTIME)

build:
	go build -o bin/shapeseal ./cmd/shapeseal

# The real Vault server for tests and `shapeseal dev`, built from a nested
# module so that shapeseal's own go.mod never lists Vault (BUSL-1.1, ~400
# dependencies). A cold build takes 10-15 minutes; it is rebuilt only when
# the pinned version changes.
bin/vault: internal/tools/vault/go.mod internal/tools/vault/go.sum
	cd internal/tools/vault && go build -o ../../../bin/vault github.com/hashicorp/vault
