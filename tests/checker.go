package tests

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/cespare/xxhash/v2"
)

// kvModel is a register per key: the history is partitioned by key, and each
// key's state is its value ("" = absent), a string whether Set and CAS
// wrote it or Incr did. Incr reads it as gridkv does (strconv.ParseInt,
// absent = 0), so a counter needs no state of its own and a key may take
// every kind of write: an Incr on a value that is not a decimal int64 must
// answer ErrInvalid (Output.Invalid) and change nothing.
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
		return step(state.(string), input.(Input), output.(Output))
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
		case OpIncr:
			switch {
			case out.Unknown:
				return fmt.Sprintf("n%d incr(%s, %+d)%s", in.Node, in.Key, in.Delta, suffix)
			case out.Invalid:
				return fmt.Sprintf("n%d incr(%s, %+d) -> not a counter (ErrInvalid)", in.Node, in.Key, in.Delta)
			}
			return fmt.Sprintf("n%d incr(%s, %+d) -> %d", in.Node, in.Key, in.Delta, out.Sum)
		case OpCAD:
			verdict := " -> kept"
			switch {
			case out.Unknown:
				verdict = ""
			case out.Swapped:
				verdict = " -> deleted"
			}
			return fmt.Sprintf("n%d compare-and-delete(%s, %q)%s%s", in.Node, in.Key, in.Old, verdict, suffix)
		default:
			return fmt.Sprintf("n%d cas(%s, %q -> %q) -> %v%s", in.Node, in.Key, in.Old, in.Value, out.Swapped, suffix)
		}
	},
	DescribeState: func(state interface{}) string {
		s := state.(string)
		if s == "" {
			return "(absent)"
		}
		if _, ok := counter(s); ok {
			return "counter " + s
		}
		return fmt.Sprintf("%q", s)
	},
}

// step is kvModel's Step on one key's value s. An operation of unknown
// outcome took effect (porcupine places it anywhere after its call, the
// end included, which stands for "never"), so only its input counts.
func step(s string, in Input, out Output) (bool, string) {
	switch in.Kind {
	case OpGet:
		return out.Value == s, s
	case OpPut:
		return true, in.Value
	case OpDelete:
		return true, ""
	case OpCAS:
		if out.Unknown {
			if s == in.Old {
				return true, in.Value
			}
			return true, s
		}
		if out.Swapped {
			return s == in.Old, in.Value
		}
		return s != in.Old, s
	case OpCAD:
		match := s != "" && s == in.Old // no write stores "", so "" never matches
		switch {
		case out.Unknown:
			if match {
				return true, ""
			}
			return true, s
		case out.Swapped:
			return match, ""
		}
		return !match, s
	case OpIncr:
		n, ok := counter(s)
		sum := n + in.Delta
		if ok && (in.Delta > 0 && sum < n || in.Delta < 0 && sum > n) {
			ok = false // overflow: gridkv refuses it as it refuses a non-counter
		}
		switch {
		case !ok:
			return out.Unknown || out.Invalid, s
		case out.Unknown:
			return true, strconv.FormatInt(sum, 10)
		}
		return !out.Invalid && out.Sum == sum, strconv.FormatInt(sum, 10)
	}
	return false, s
}

// counter reads s as Incr does: absent is 0, else a decimal int64.
func counter(s string) (int64, bool) {
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// Window is one fault's span on the history clock.
type Window struct {
	Fault      string
	Start, End int64
	OK, Total  int // operations called inside it, and those that succeeded
	// ByOp splits OK and Total by read mode ("default", "readindex", ...)
	// and "write" (put, delete, CAS, Incr, CompareAndDelete).
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

// withoutUnseenWrites drops puts and CAS of unknown outcome whose value
// nobody ever observed (no read returned it, no CAS or CompareAndDelete
// expected it). Each such write costs porcupine a doubling of its search,
// since it stays open to the end. Dropping them is sound for a verdict of
// Ok: a linearization of the pruned history extends to the full one by
// placing those writes after everything else, which their infinite return
// time allows. (The converse need not hold, so a pruned failure is checked
// again on the full history.) Deletes, Incrs and CompareAndDeletes of
// unknown outcome stay: their effect shows as an absence or a shifted
// count, which no one value betrays.
func withoutUnseenWrites(ops []porcupine.Operation) []porcupine.Operation {
	seen := map[string]bool{}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		switch in.Kind {
		case OpGet:
			seen[in.Key+"\x00"+out.Value] = true
		case OpCAS, OpCAD:
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
// some write wrote (or absent) — never an invented or torn value. An Incr
// writes the sum it answers; one of unknown outcome wrote a sum nobody
// knows, so on a key that took one any counter value passes.
func checkWeakReads(h *History) []string {
	written := map[string]bool{}
	anyCounter := map[string]bool{} // keys that took an Incr of unknown outcome
	for _, op := range h.ops {
		in, out := op.Input.(Input), op.Output.(Output)
		switch {
		case in.Kind == OpPut || in.Kind == OpCAS:
			written[in.Key+"\x00"+in.Value] = true
		case in.Kind == OpIncr && out.Unknown:
			anyCounter[in.Key] = true
		case in.Kind == OpIncr && !out.Invalid:
			written[in.Key+"\x00"+strconv.FormatInt(out.Sum, 10)] = true
		}
	}
	var bad []string
	for _, op := range h.weak {
		in, out := op.Input.(Input), op.Output.(Output)
		if out.Value == "" || written[in.Key+"\x00"+out.Value] {
			continue
		}
		if _, ok := counter(out.Value); ok && anyCounter[in.Key] {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s read %q, which no write wrote", in.Mode, out.Value))
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
