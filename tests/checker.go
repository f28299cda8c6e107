package tests

import (
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/cespare/xxhash/v2"
)

// kvModel is a register per key: the history is partitioned by key, and each
// key's state is its value ("" = absent).
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(Input).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		s, in, out := state.(string), input.(Input), output.(Output)
		switch in.Kind {
		case OpGet:
			return out.Value == s, s
		case OpPut:
			return true, in.Value
		case OpDelete:
			return true, ""
		case OpCAS:
			if out.Unknown { // it took effect (the call returns +inf): CAS semantics
				if s == in.Old {
					return true, in.Value
				}
				return true, s
			}
			if out.Swapped {
				return s == in.Old, in.Value
			}
			return s != in.Old, s
		}
		return false, s
	},
	Equal: func(a, b interface{}) bool { return a.(string) == b.(string) },
	Hash:  func(state interface{}) uint64 { return xxhash.Sum64String(state.(string)) },
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(Input), output.(Output)
		suffix := ""
		if out.Unknown {
			suffix = " (unknown: " + out.Err + ")"
		}
		switch in.Kind {
		case OpGet:
			return fmt.Sprintf("n%d get(%s, %s) -> %q", in.Node, in.Key, in.Mode, out.Value)
		case OpPut:
			return fmt.Sprintf("n%d put(%s, %q)%s", in.Node, in.Key, in.Value, suffix)
		case OpDelete:
			return fmt.Sprintf("n%d delete(%s)%s", in.Node, in.Key, suffix)
		default:
			return fmt.Sprintf("n%d cas(%s, %q -> %q) -> %v%s", in.Node, in.Key, in.Old, in.Value, out.Swapped, suffix)
		}
	},
	DescribeState: func(state interface{}) string {
		if state.(string) == "" {
			return "(absent)"
		}
		return fmt.Sprintf("%q", state)
	},
}

// Window is one fault's span on the history clock.
type Window struct {
	Fault      string
	Start, End int64
	OK, Total  int // operations called inside it, and those that succeeded
	// ByOp splits OK and Total by read mode ("default", "readindex", ...)
	// and "write" (put, delete, CAS).
	ByOp map[string]Avail
}

// Avail is how many operations were called (Total) and succeeded (OK).
type Avail struct{ OK, Total int }

// opClass is an operation's entry in Window.ByOp.
func opClass(in Input) string {
	if in.Kind == OpGet {
		return in.Mode.String()
	}
	return "write"
}

// opClasses is the order the report prints ByOp in.
var opClasses = []string{ReadDefault.String(), ReadIndex.String(), ReadMajority.String(), ReadOne.String(), ReadStale.String(), "write"}

// checkLinearizable runs porcupine on the linearizable part of h; on
// failure (or a checker time-out, which counts as failure) it writes an
// HTML visualization with the fault windows annotated to vizPath.
func checkLinearizable(h *History, windows []Window, timeout time.Duration, vizPath string) (porcupine.CheckResult, time.Duration, error) {
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(kvModel, withoutUnseenWrites(h.ops), timeout)
	if res != porcupine.Ok {
		// The pruned history is stricter than the full one; only the
		// full history's verdict counts against the system.
		res, info = porcupine.CheckOperationsVerbose(kvModel, h.ops, timeout)
	}
	took := time.Since(start)
	if res == porcupine.Ok || vizPath == "" {
		return res, took, nil
	}
	var notes []porcupine.Annotation
	for _, w := range windows {
		notes = append(notes, porcupine.Annotation{Tag: "nemesis", Start: w.Start, End: w.End,
			Description: w.Fault, BackgroundColor: "#fde2e2"})
	}
	info.AddAnnotations(notes)
	f, err := os.Create(vizPath)
	if err != nil {
		return res, took, err
	}
	defer f.Close()
	return res, took, porcupine.Visualize(kvModel, info, f)
}

// withoutUnseenWrites drops writes of unknown outcome whose value nobody
// ever observed (no read returned it, no CAS expected it). Each such write
// costs porcupine a doubling of its search, since it stays open to the end.
// Dropping them is sound for a verdict of Ok: a linearization of the pruned
// history extends to the full one by placing those writes after everything
// else, which their infinite return time allows. (The converse need not
// hold, so a pruned failure is checked again on the full history.)
func withoutUnseenWrites(ops []porcupine.Operation) []porcupine.Operation {
	seen := map[string]bool{}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		switch in.Kind {
		case OpGet:
			seen[in.Key+"\x00"+out.Value] = true
		case OpCAS:
			seen[in.Key+"\x00"+in.Old] = true
		}
	}
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		in := op.Input.(Input)
		if op.Output.(Output).Unknown && (in.Kind == OpPut || in.Kind == OpCAS) && !seen[in.Key+"\x00"+in.Value] {
			continue
		}
		out = append(out, op)
	}
	return out
}

// checkWeakReads checks reads that may be stale: each must return a value
// some write wrote (or absent) — never an invented or torn value.
func checkWeakReads(h *History) []string {
	written := map[string]bool{}
	for _, op := range h.ops {
		if in := op.Input.(Input); in.Kind == OpPut || in.Kind == OpCAS {
			written[in.Key+"\x00"+in.Value] = true
		}
	}
	var bad []string
	for _, op := range h.weak {
		in, out := op.Input.(Input), op.Output.(Output)
		if out.Value != "" && !written[in.Key+"\x00"+out.Value] {
			bad = append(bad, fmt.Sprintf("%s read %q, which no write wrote", in.Mode, out.Value))
		}
	}
	return bad
}

// availability fills each window's counts from the history.
func availability(h *History, windows []Window) {
	count := func(call int64, in Input, ok bool) {
		for i := range windows {
			w := &windows[i]
			if call < w.Start || call > w.End {
				continue
			}
			if w.ByOp == nil {
				w.ByOp = map[string]Avail{}
			}
			a := w.ByOp[opClass(in)]
			w.Total++
			a.Total++
			if ok {
				w.OK++
				a.OK++
			}
			w.ByOp[opClass(in)] = a
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ops := range [][]porcupine.Operation{h.ops, h.weak} {
		for _, op := range ops {
			count(op.Call, op.Input.(Input), !op.Output.(Output).Unknown)
		}
	}
	for _, f := range h.failedOps {
		count(f.call, f.in, false)
	}
}
