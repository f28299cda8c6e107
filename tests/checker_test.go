package tests

import (
	"os"
	"path/filepath"
	"strings"
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

// Incr and CompareAndDelete on the same one-register-per-key model: a
// counter is the key's value read as a decimal.
func TestCheckerVerdictsIncrAndCompareAndDelete(t *testing.T) {
	put := func(v string) Input { return Input{Kind: OpPut, Key: "k", Value: v} }
	get := Input{Kind: OpGet, Key: "k"}
	del := Input{Kind: OpDelete, Key: "k"}
	incr := func(d int64) Input { return Input{Kind: OpIncr, Key: "k", Delta: d} }
	cad := func(old string) Input { return Input{Kind: OpCAD, Key: "k", Old: old} }
	sum := func(n int64) Output { return Output{Sum: n} }
	value := func(v string) Output { return Output{Value: v} }
	invalid := Output{Invalid: true}
	unknown := Output{Unknown: true}
	deleted, kept := Output{Swapped: true}, Output{}
	const maxInt = "9223372036854775807"
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		// Incr.
		{"incr counts from absent", []porcupine.Operation{
			op(0, incr(1), 0, sum(1), 10), op(1, get, 20, value("1"), 30)}, porcupine.Ok},
		{"two incrs answer the same sum", []porcupine.Operation{
			op(0, incr(1), 0, sum(1), 10), op(1, incr(1), 5, sum(1), 15)}, porcupine.Illegal},
		{"a read misses an acknowledged incr", []porcupine.Operation{
			op(0, incr(1), 0, sum(1), 10), op(0, incr(1), 11, sum(2), 19),
			op(1, get, 20, value("1"), 30)}, porcupine.Illegal},
		{"concurrent incrs apply in either order", []porcupine.Operation{
			op(0, incr(1), 0, sum(3), 20), op(1, incr(2), 5, sum(2), 25)}, porcupine.Ok},
		{"a sum that skips a step", []porcupine.Operation{
			op(0, incr(1), 0, sum(1), 10), op(1, incr(2), 20, sum(4), 30)}, porcupine.Illegal},
		{"incr counts on a decimal put", []porcupine.Operation{
			op(0, put("10"), 0, Output{}, 10), op(1, incr(-3), 20, sum(7), 30), op(1, get, 40, value("7"), 50)}, porcupine.Ok},
		{"incr after a delete counts from 0", []porcupine.Operation{
			op(0, incr(5), 0, sum(5), 10), op(0, del, 11, Output{}, 19), op(1, incr(5), 20, sum(5), 30)}, porcupine.Ok},
		{"incr on a value that is not a counter is refused", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, incr(1), 20, invalid, 30), op(1, get, 40, value("a"), 50)}, porcupine.Ok},
		{"incr on a value that is not a counter cannot count", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, incr(1), 20, sum(1), 30)}, porcupine.Illegal},
		{"a refused incr changes nothing", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, incr(1), 20, invalid, 30), op(1, get, 40, value(""), 50)}, porcupine.Illegal},
		{"incr on a counter cannot be refused", []porcupine.Operation{
			op(0, incr(1), 0, sum(1), 10), op(1, incr(1), 20, invalid, 30)}, porcupine.Illegal},
		{"a refused incr is ordered too", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, del, 11, Output{}, 19), op(1, incr(1), 20, invalid, 30)}, porcupine.Illegal},
		{"overflow is refused", []porcupine.Operation{
			op(0, put(maxInt), 0, Output{}, 10), op(1, incr(1), 20, invalid, 30)}, porcupine.Ok},
		{"overflow cannot wrap", []porcupine.Operation{
			op(0, put(maxInt), 0, Output{}, 10), op(1, incr(1), 20, sum(-1<<63), 30)}, porcupine.Illegal},
		{"unknown incr may have happened later", []porcupine.Operation{
			op(0, incr(1), 0, unknown, infinity), op(1, get, 50, value(""), 60),
			op(1, get, 70, value("1"), 80)}, porcupine.Ok},
		{"unknown incr may never have happened", []porcupine.Operation{
			op(0, incr(1), 0, unknown, infinity), op(1, incr(2), 50, sum(2), 60)}, porcupine.Ok},
		{"unknown incr happened before a later sum", []porcupine.Operation{
			op(0, incr(1), 0, unknown, infinity), op(1, incr(2), 50, sum(3), 60)}, porcupine.Ok},
		{"unknown incr counts once", []porcupine.Operation{
			op(0, incr(1), 0, unknown, infinity), op(1, incr(2), 50, sum(4), 60)}, porcupine.Illegal},
		{"unknown incr cannot undo itself", []porcupine.Operation{
			op(0, incr(1), 0, unknown, infinity), op(1, get, 50, value("1"), 60),
			op(1, get, 70, value(""), 80)}, porcupine.Illegal},
		{"unknown incr on a value that is not a counter changes nothing", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, incr(1), 20, unknown, infinity),
			op(1, get, 40, value("a"), 50)}, porcupine.Ok},

		// CompareAndDelete.
		{"compare-and-delete of the value deletes it", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, cad("a"), 20, deleted, 30), op(1, get, 40, value(""), 50)}, porcupine.Ok},
		{"compare-and-delete deleted while the value differed", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, put("b"), 11, Output{}, 19),
			op(1, cad("a"), 20, deleted, 30)}, porcupine.Illegal},
		{"compare-and-delete kept the value it matched", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, cad("a"), 20, kept, 30)}, porcupine.Illegal},
		{"compare-and-delete keeps another value", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, put("b"), 11, Output{}, 19),
			op(1, cad("a"), 20, kept, 30), op(1, get, 40, value("b"), 50)}, porcupine.Ok},
		{"compare-and-delete that kept must not delete", []porcupine.Operation{
			op(0, put("b"), 0, Output{}, 10), op(1, cad("a"), 20, kept, 30), op(1, get, 40, value(""), 50)}, porcupine.Illegal},
		{"compare-and-delete of an absent key deletes nothing", []porcupine.Operation{
			op(0, cad("a"), 0, deleted, 10)}, porcupine.Illegal},
		{"a put concurrent with a compare-and-delete goes after it", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, put("b"), 15, Output{}, 40),
			op(1, cad("a"), 20, deleted, 30), op(1, get, 50, value("b"), 60)}, porcupine.Ok},
		{"a compare-and-delete that deleted a cannot have deleted the concurrent put", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(0, put("b"), 15, Output{}, 40),
			op(1, cad("a"), 20, deleted, 30), op(1, get, 50, value(""), 60)}, porcupine.Illegal},
		{"two compare-and-deletes of one value: one deletes", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, cad("a"), 20, deleted, 30), op(2, cad("a"), 20, deleted, 30)}, porcupine.Illegal},
		{"compare-and-delete of a counter", []porcupine.Operation{
			op(0, incr(1), 0, sum(1), 10), op(1, cad("1"), 20, deleted, 30), op(0, incr(1), 40, sum(1), 50)}, porcupine.Ok},
		{"unknown compare-and-delete may have happened later", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, cad("a"), 20, unknown, infinity),
			op(0, get, 50, value("a"), 60), op(0, get, 70, value(""), 80)}, porcupine.Ok},
		{"unknown compare-and-delete cannot undo itself", []porcupine.Operation{
			op(0, put("a"), 0, Output{}, 10), op(1, cad("a"), 20, unknown, infinity),
			op(0, get, 50, value(""), 60), op(0, get, 70, value("a"), 80)}, porcupine.Illegal},
		{"unknown compare-and-delete of another value deletes nothing", []porcupine.Operation{
			op(0, put("b"), 0, Output{}, 10), op(1, cad("a"), 20, unknown, infinity),
			op(0, get, 50, value(""), 60)}, porcupine.Illegal},
	}
	for _, c := range cases {
		if got := check(t, c.ops); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// A put of unknown outcome that only a compare-and-delete expected is
// observed, and stays in the pruned history.
func TestUnseenWritesKeepThoseACompareAndDeleteExpected(t *testing.T) {
	ops := []porcupine.Operation{
		op(0, Input{Kind: OpPut, Key: "k", Value: "u"}, 0, Output{Unknown: true}, infinity),
		op(0, Input{Kind: OpPut, Key: "k", Value: "v"}, 1, Output{Unknown: true}, infinity),
		op(1, Input{Kind: OpCAD, Key: "k", Old: "u"}, 20, Output{Swapped: true}, 30),
		op(2, Input{Kind: OpIncr, Key: "k", Delta: 1}, 40, Output{Unknown: true}, infinity),
	}
	got := withoutUnseenWrites(ops)
	if len(got) != 3 || got[0].Input.(Input).Value != "u" || got[1].Input.(Input).Kind != OpCAD {
		t.Fatalf("pruned to %v, want the put of u, the compare-and-delete and the incr", got)
	}
	if res := check(t, ops); res != porcupine.Ok {
		t.Fatalf("%s, want Ok", res)
	}
}

func TestWeakReadsOfCounters(t *testing.T) {
	incr := Input{Kind: OpIncr, Key: "k", Delta: 1}
	weak := func(v string) porcupine.Operation {
		return op(1, Input{Kind: OpGet, Key: "k", Mode: ReadStale}, 0, Output{Value: v}, 5)
	}
	h := &History{
		ops:  []porcupine.Operation{op(0, incr, 0, Output{Sum: 1}, 10), op(0, incr, 11, Output{Invalid: true}, 20)},
		weak: []porcupine.Operation{weak("1"), weak("0")},
	}
	if bad := checkWeakReads(h); len(bad) != 1 {
		t.Fatalf("want only the read of 0 (no incr answered it) flagged: %v", bad)
	}
	// An incr of unknown outcome wrote a sum nobody knows: any counter
	// passes, other values still do not.
	h.ops = append(h.ops, op(0, incr, 30, Output{Unknown: true}, infinity))
	h.weak = append(h.weak, weak("zzz"))
	if bad := checkWeakReads(h); len(bad) != 1 {
		t.Fatalf("want only the read of zzz flagged: %v", bad)
	}
}

// Violations print readably: each operation and state as the
// visualization shows it.
func TestModelDescriptions(t *testing.T) {
	cases := []struct {
		in   Input
		out  Output
		want string
	}{
		{Input{Kind: OpIncr, Key: "k", Delta: 2, Node: 1}, Output{Sum: 7}, "n1 incr(k, +2) -> 7"},
		{Input{Kind: OpIncr, Key: "k", Delta: -1}, Output{Invalid: true}, "n0 incr(k, -1) -> not a counter (ErrInvalid)"},
		{Input{Kind: OpIncr, Key: "k", Delta: 1}, Output{Unknown: true, Err: "timed out"}, "n0 incr(k, +1) (unknown: timed out)"},
		{Input{Kind: OpCAD, Key: "k", Old: "a"}, Output{Swapped: true}, `n0 compare-and-delete(k, "a") -> deleted`},
		{Input{Kind: OpCAD, Key: "k", Old: "a"}, Output{}, `n0 compare-and-delete(k, "a") -> kept`},
		{Input{Kind: OpCAD, Key: "k", Old: "a"}, Output{Unknown: true, Err: "timed out"}, `n0 compare-and-delete(k, "a") (unknown: timed out)`},
	}
	for _, c := range cases {
		if got := kvModel.DescribeOperation(c.in, c.out); got != c.want {
			t.Errorf("got %s, want %s", got, c.want)
		}
	}
	for state, want := range map[string]string{"": "(absent)", "-3": "counter -3", "c1-2": `"c1-2"`} {
		if got := kvModel.DescribeState(state); got != want {
			t.Errorf("state %q: got %s, want %s", state, got, want)
		}
	}
}

// The visualization of a failed check names the new operations readably.
func TestVisualizationOfAnIncrViolation(t *testing.T) {
	incr := Input{Kind: OpIncr, Key: "k", Delta: 1}
	h := &History{ops: []porcupine.Operation{op(0, incr, 0, Output{Sum: 1}, 10), op(1, incr, 5, Output{Sum: 1}, 15)}}
	viz := filepath.Join(t.TempDir(), "viz.html")
	res, _, err := checkLinearizable(h, nil, 10*time.Second, viz)
	if err != nil || res != porcupine.Illegal {
		t.Fatalf("%s, %v; want Illegal", res, err)
	}
	b, err := os.ReadFile(viz)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"incr(k, +1)", "counter 1"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the visualization does not show %q", want)
		}
	}
}
