# Targets CI and developers use. `make test` is the command README.md gives.
GO ?= go
STATICCHECK = $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Packages with concurrency run under the race detector.
RACE_PKGS = ./fsm/... ./raftgroup/... ./gossip/... ./gridkv/... ./tests/... ./internal/...

.PHONY: test race unit lint bench proto fuzz example

test: lint unit race

unit:
	$(GO) test -count=1 -timeout 25m ./...

race:
	$(GO) test -count=1 -timeout 25m -race $(RACE_PKGS)

lint:
	$(GO) vet ./...
	cd benchmarks && $(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(STATICCHECK) ./...
	cd benchmarks && $(STATICCHECK) ./...

fuzz:
	$(GO) test ./raftgroup -run '^$$' -fuzz FuzzDecodeFrame -fuzztime 60s

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./fsm/
	cd benchmarks && $(GO) run ./raftbench -mode idle -groups 64 -transport mux
	cd benchmarks && $(GO) run ./raftbench -mode idle -groups 64 -transport net

example:
	$(GO) run ./examples/raftgroups

proto:
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --go_out=. --go_opt=paths=source_relative fsm/fsmpb/command.proto
