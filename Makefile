# Test entry points. CI runs .ci/run, which runs `make test`.
# withpg starts one private PostgreSQL (or uses DATABASE_URL) for all packages.

.PHONY: test bench build

test:
	go vet ./...
	go run ./internal/pgtest/cmd/withpg -- go test -count=1 -timeout 20m ./...

bench:
	go run ./internal/pgtest/cmd/withpg -- go test -run '^$$' -bench . -benchmem ./...

build:
	go build -o bin/shapeseal ./cmd/shapeseal
