package tests

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func op(client int, in Input, call int64, out Output, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func check(t *testing.T, ops []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	res, _, err := checkLinearizable(&History{ops: ops}, nil, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// The model and checker, on histories small enough to reason about.
func TestCheckerVerdicts(t *testing.T) {
	put := func(v string) Input { return Input{Kind: OpPut, Key: "k", Value: v} }
	get := Input{Kind: OpGet, Key: "k"}
	cas := func(old, v string) Input { return Input{Kind: OpCAS, Key: "k", Old: old, Value: v} }
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"read after write", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, get, 20, Output{Value: "a"}, 30)}, porcupine.Ok},
		{"stale read after an acknowledged write", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, put("b"), 11, Output{}, 19),
			op(1, get, 20, Output{Value: "a"}, 30)}, porcupine.Illegal},
		{"concurrent write may be seen either way", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, put("b"), 15, Output{}, 40),
			op(1, get, 20, Output{Value: "a"}, 30)}, porcupine.Ok},
		{"unknown write may have happened later", []porcupine.Operation{
			op(0, put("a"), 0, Output{Unknown: true}, infinity), op(1, get, 50, Output{}, 60),
			op(1, get, 70, Output{Value: "a"}, 80)}, porcupine.Ok},
		{"unknown write cannot undo itself", []porcupine.Operation{
			op(0, put("a"), 0, Output{Unknown: true}, infinity), op(1, get, 50, Output{Value: "a"}, 60),
			op(1, get, 70, Output{}, 80)}, porcupine.Illegal},
		{"CAS from absent wins once", []porcupine.Operation{
			op(0, cas("", "x"), 0, Output{Swapped: true}, 10), op(1, cas("", "y"), 20, Output{Swapped: true}, 30)}, porcupine.Illegal},
		{"failed CAS saw another value", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, cas("b", "c"), 20, Output{}, 30),
			op(1, get, 40, Output{Value: "a"}, 50)}, porcupine.Ok},
		{"unobserved unknown writes are pruned, a violation still found", []porcupine.Operation{
			op(2, put("u1"), 0, Output{Unknown: true}, infinity), op(3, put("u2"), 1, Output{Unknown: true}, infinity),
			op(0, put("a"), 2, Output{}, 10), op(0, put("b"), 11, Output{}, 19),
			op(1, get, 20, Output{Value: "a"}, 30)}, porcupine.Illegal},
	}
	for _, c := range cases {
		if got := check(t, c.ops); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func TestWeakReadsMustReturnWrittenValues(t *testing.T) {
	h := &History{
		ops:  []porcupine.Operation{op(0, Input{Kind: OpPut, Key: "k", Value: "a"}, 0, Output{}, 10)},
		weak: []porcupine.Operation{op(1, Input{Kind: OpGet, Key: "k", Mode: ReadStale}, 0, Output{Value: "a"}, 5)},
	}
	if bad := checkWeakReads(h); len(bad) != 0 {
		t.Fatalf("a written value flagged: %v", bad)
	}
	h.weak = append(h.weak, op(1, Input{Kind: OpGet, Key: "k", Mode: ReadOne}, 0, Output{Value: "zzz"}, 5))
	if bad := checkWeakReads(h); len(bad) != 1 {
		t.Fatalf("an invented value: %v", bad)
	}
}
