# Targets CI and developers use. `make test` is the command README.md gives.
GO ?= go
RACE_PKGS = ./fsm/... ./raftgroup/... ./internal/...

.PHONY: test race unit lint bench proto fuzz

test: lint unit race

unit:
	$(GO) test -count=1 ./...

race:
	$(GO) test -count=1 -race $(RACE_PKGS)

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

fuzz:
	$(GO) test ./raftgroup -run '^$$' -fuzz FuzzDecodeFrame -fuzztime 60s

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./fsm/ ./raftgroup/

proto:
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --go_out=. --go_opt=paths=source_relative fsm/fsmpb/command.proto
