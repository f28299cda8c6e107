package tests

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/gridkv/gridkv/gridkv"
)

// The watch checker: what the suite's watchers saw (watchers.go), held to
// the history the clients recorded and to each other. docs/jepsen.md,
// "The watch check", states what it checks; checkWatches says how.

// watchEvent is one event a watcher received, with its receive time on
// the history clock.
type watchEvent struct {
	Kind    gridkv.EventKind
	Key     string // "" for EventProgress and EventCompacted
	Value   string // EventSet
	Version uint64
	Range   int
	Expires bool // an EventSet with an expiry
	At      int64
}

// watchStream is everything one of the suite's watchers saw: a watch, and
// each watch that resumed it from the last one's cursor (WatchFrom) after
// it ended with its node, one stream.
type watchStream struct {
	Name    string
	Start   gridkv.Cursor // where the first watch began (Watcher.Start)
	StartAt int64         // when the first Watch returned
	Events  []watchEvent
	End     gridkv.Cursor // Start advanced with every event
	// Complete: the suite stopped it after the final reads and its drain;
	// otherwise it ended early, for EndErr (ErrCompacted), and covers each
	// range only up to End.
	Complete bool
	EndErr   string
	Segments []watchSegment
}

// watchSegment is one gridkv watch of a stream.
type watchSegment struct {
	Node     string
	From     gridkv.Cursor // the cursor it resumed from; nil for the first
	Start    gridkv.Cursor // its Watcher.Start
	Begin    int64
	Finish   int64
	Events   int
	Err      string // why it ended
	Resumed  bool
	Attempts int // failed Watch calls before it began
}

// WatchSummary is the watch check's outcome, for the report.
type WatchSummary struct {
	Watchers  int
	Resumes   int // watches resumed from a cursor after their node crashed or closed
	Events    int // keyed events (set, delete, expire)
	Progress  int // EventProgress events
	Keys      int // keys checked
	Writes    int // acknowledged writes that changed a key, each checked in every stream covering it
	Compacted int // watchers that ended with ErrCompacted
	Problems  []string
	// Drain is how long the watchers took, after the final reads, to see
	// every key's final value; Check, how long the check took.
	Drain, Check time.Duration
	// Fault says what a negative control's watchFault did ("" without one).
	Fault string
	// Streams describes each watcher: its events, and the nodes it
	// watched through, from when.
	Streams []string
}

// String is the report's line.
func (w *WatchSummary) String() string {
	verdict := "ok"
	if len(w.Problems) > 0 {
		verdict = fmt.Sprintf("%d problems", len(w.Problems))
	}
	s := fmt.Sprintf("watch: %d watchers (%d resumed), %d events (%d progress) on %d keys, %d acknowledged changes, %d compacted, drained in %v, check %v: %s",
		w.Watchers, w.Resumes, w.Events, w.Progress, w.Keys, w.Writes, w.Compacted, w.Drain.Round(time.Millisecond), w.Check.Round(time.Millisecond), verdict)
	s += "\n  watchers: " + strings.Join(w.Streams, "; ")
	if w.Fault != "" {
		s += "\n  watch fault (negative control): " + w.Fault
	}
	return s
}

// describe is s in a few words: its events, where it watched, how it
// ended.
func (s *watchStream) describe() string {
	var segs []string
	for _, seg := range s.Segments {
		tries := ""
		if seg.Attempts > 0 {
			tries = fmt.Sprintf(" (after %d rounds of failed Watch calls)", seg.Attempts)
		}
		segs = append(segs, fmt.Sprintf("%s from %s%s", seg.Node, fmtAt(seg.Begin), tries))
	}
	end := "to the end"
	if !s.Complete {
		end = "ended: " + s.EndErr
	}
	return fmt.Sprintf("%s %d events on %s, %s", s.Name, len(s.Events), strings.Join(segs, ", "), end)
}

// watchInput is what checkWatches checks.
type watchInput struct {
	Streams []*watchStream
	// Ops is the checked history (h.ops): every write, acknowledged or of
	// unknown outcome, and the reads. Refused are the writes that failed
	// for certain (not applied).
	Ops     []porcupine.Operation
	Refused []failedOp
	Keys    []string
	// Final is each key's value as the final reads after the heal returned
	// it ("" = absent); a key missing was not read.
	Final map[string]string
}

// fmtVersion prints a version as epoch.sequence.
func fmtVersion(v uint64) string { return fmt.Sprintf("%d.%d", v>>48, v&(1<<48-1)) }

func fmtAt(t int64) string {
	if t >= infinity {
		return "never"
	}
	return fmt.Sprintf("%.3fs", float64(t)/1e9)
}

func (e watchEvent) String() string {
	switch e.Kind {
	case gridkv.EventSet:
		exp := ""
		if e.Expires {
			exp = " (with a TTL)"
		}
		return fmt.Sprintf("v%s set %q%s @%s", fmtVersion(e.Version), e.Value, exp, fmtAt(e.At))
	case gridkv.EventProgress:
		return fmt.Sprintf("range %d progress to v%s @%s", e.Range, fmtVersion(e.Version), fmtAt(e.At))
	}
	return fmt.Sprintf("v%s %s @%s", fmtVersion(e.Version), e.Kind, fmtAt(e.At))
}

// keyed reports whether e is a change of a key (not progress, not the end).
func (e watchEvent) keyed() bool {
	return e.Kind == gridkv.EventSet || e.Kind == gridkv.EventDelete || e.Kind == gridkv.EventExpire
}

// state is the key's value after e ("" = absent).
func (e watchEvent) state() string {
	if e.Kind == gridkv.EventSet {
		return e.Value
	}
	return ""
}

// problemList collects problems by kind, keeping the first few of each so
// that a broken run stays readable. Each line begins with the subject
// ("watch", "scan") and the kind.
type problemList struct {
	subject string
	n       map[string]int
	out     []string
}

const problemsPerKind = 5

func (p *problemList) add(kind, format string, args ...any) {
	if p.n == nil {
		p.n = map[string]int{}
	}
	p.n[kind]++
	if p.n[kind] <= problemsPerKind {
		p.out = append(p.out, p.subject+" "+kind+": "+fmt.Sprintf(format, args...))
	}
}

func (p *problemList) list() []string {
	kinds := make([]string, 0, len(p.n))
	for k := range p.n {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	out := p.out
	for _, k := range kinds {
		if n := p.n[k]; n > problemsPerKind {
			out = append(out, fmt.Sprintf("%s %s: ... and %d more", p.subject, k, n-problemsPerKind))
		}
	}
	return out
}

// keyWrites is what the history says about one key's writes.
type keyWrites struct {
	// stores counts, per value, the put and CAS writes that may have
	// stored it (acknowledged or unknown; values are unique per write).
	stores  map[string]int
	storeOp map[string]porcupine.Operation
	refused map[string]porcupine.Operation // values of puts and CAS refused for certain
	deltas  map[int64]bool                 // what Incrs that may have counted added
	incrs   bool
	// deletes: a Delete that may have applied; cadOld, the values that
	// CompareAndDeletes that may have applied expected.
	deletes bool
	cadOld  map[string]bool
	// changed are the writes that certainly changed the key: each must
	// be an event in every stream that covers it.
	changed []porcupine.Operation
	first   int64 // the first write's call; infinity when none
}

// uniqueValue reports whether an event storing v is certainly the one put
// or CAS that wrote v: no Incr could have stored it too.
func (kw *keyWrites) uniqueValue(v string) bool {
	if kw.stores[v] == 0 {
		return false
	}
	_, isCounter := counter(v)
	return !kw.incrs || !isCounter
}

// effect is the event a write that certainly changed its key must have:
// the kind and, for a set, the value.
func effect(op porcupine.Operation) (gridkv.EventKind, string) {
	in, out := op.Input.(Input), op.Output.(Output)
	switch in.Kind {
	case OpIncr:
		return gridkv.EventSet, strconv.FormatInt(out.Sum, 10)
	case OpCAD:
		return gridkv.EventDelete, ""
	}
	return gridkv.EventSet, in.Value
}

func indexWrites(in watchInput) map[string]*keyWrites {
	byKey := map[string]*keyWrites{}
	get := func(k string) *keyWrites {
		kw := byKey[k]
		if kw == nil {
			kw = &keyWrites{stores: map[string]int{}, storeOp: map[string]porcupine.Operation{},
				refused: map[string]porcupine.Operation{}, deltas: map[int64]bool{}, cadOld: map[string]bool{}, first: infinity}
			byKey[k] = kw
		}
		return kw
	}
	for _, k := range in.Keys {
		get(k)
	}
	for _, op := range in.Ops {
		i, o := op.Input.(Input), op.Output.(Output)
		if i.Kind == OpGet {
			continue
		}
		kw := get(i.Key)
		kw.first = min(kw.first, op.Call)
		certain := !o.Unknown
		switch i.Kind {
		case OpPut, OpCAS:
			if i.Kind == OpPut || o.Swapped || o.Unknown {
				kw.stores[i.Value]++
				kw.storeOp[i.Value] = op
				if certain {
					kw.changed = append(kw.changed, op)
				}
			}
		case OpIncr:
			kw.incrs = true
			if !o.Invalid {
				kw.deltas[i.Delta] = true
				if certain {
					kw.changed = append(kw.changed, op)
				}
			}
		case OpCAD:
			if o.Swapped || o.Unknown {
				kw.cadOld[i.Old] = true
				if certain {
					kw.changed = append(kw.changed, op)
				}
			}
		case OpDelete:
			kw.deletes = true // a change only if the key was there: not required
		}
	}
	for _, f := range in.Refused {
		if f.in.Kind == OpPut || f.in.Kind == OpCAS {
			get(f.in.Key).refused[f.in.Value] = porcupine.Operation{Input: f.in, Output: Output{}, Call: f.call}
		}
	}
	return byKey
}

func describeOp(op porcupine.Operation) string {
	return fmt.Sprintf("%s [%s, %s]", kvModel.DescribeOperation(op.Input, op.Output), fmtAt(op.Call), fmtAt(op.Return))
}

// neighbours shows a stream's events of one key around version v.
func neighbours(evs []watchEvent, v uint64) string {
	i := sort.Search(len(evs), func(i int) bool { return evs[i].Version >= v })
	lo, hi := max(0, i-1), min(len(evs), i+1)
	if lo == hi {
		return "no events of the key"
	}
	var parts []string
	for _, e := range evs[lo:hi] {
		parts = append(parts, e.String())
	}
	return strings.Join(parts, ", ")
}

// checkWatches holds each watcher's stream to the promise of Watch, and
// to the history:
//
//	(a) order: per key, versions strictly grow (no repeat, no reorder), and
//	    each is above the stream's start; per range too, since the
//	    cursor resumes there (an event at or below a range's last
//	    version or progress floor would be skipped by WatchFrom);
//	(b) agreement: one (kind, value) per (key, version) across every
//	    stream, one key per (range, version); and no gaps: each stream
//	    holds every version of the key any stream saw above its start
//	    (up to its End where it ended early);
//	(c) acknowledged writes: each write that certainly changed a key
//	    (put, CAS that swapped, Incr that counted, CompareAndDelete that
//	    deleted) has its event (set of its value or its sum; delete) in
//	    every stream that covers it, and writes acknowledged before
//	    another was invoked come first; every event is one some write
//	    could have made (no refused write's value, no invented value,
//	    no delete of an absent key, no expiry: the workload sets no TTL);
//	(d) final state: each stream that ran to the end leaves every key at
//	    the value the final reads returned.
func checkWatches(in watchInput) WatchSummary {
	p := problemList{subject: "watch"}
	sum := WatchSummary{Watchers: len(in.Streams), Keys: len(in.Keys)}
	writes := indexWrites(in)
	keyRange := map[string]int{}
	union := map[string]map[uint64]seenEvent{} // key -> version -> the first stream's event
	rangeKey := map[[2]uint64]string{}         // (range, version) -> key

	// Per stream: (a), and the union for (b).
	byKey := make([]map[string][]watchEvent, len(in.Streams))
	for si, s := range in.Streams {
		sum.Streams = append(sum.Streams, s.describe())
		byKey[si] = map[string][]watchEvent{}
		for _, seg := range s.Segments {
			if seg.Resumed {
				sum.Resumes++
				for r, v := range seg.From {
					if seg.Start[r] != v {
						p.add("seam", "%s resumed on %s from range %d at v%s, but its watch began at v%s",
							s.Name, seg.Node, r, fmtVersion(v), fmtVersion(seg.Start[r]))
					}
				}
			}
		}
		if strings.Contains(s.EndErr, gridkv.ErrCompacted.Error()) {
			sum.Compacted++
			p.add("compacted", "%s ended early: %s, after %d events", s.Name, s.EndErr, len(s.Events))
		} else if !s.Complete {
			p.add("ended", "%s ended early: %s", s.Name, s.EndErr)
		}
		lastKey := map[string]uint64{}
		lastRange := map[int]uint64{}
		for _, e := range s.Events {
			if e.Kind == gridkv.EventProgress {
				sum.Progress++
				lastRange[e.Range] = max(lastRange[e.Range], e.Version)
				continue
			}
			if !e.keyed() {
				continue
			}
			sum.Events++
			if _, ok := writes[e.Key]; !ok {
				p.add("invented", "%s: event for %s, a key no client wrote: %s", s.Name, e.Key, e)
				continue
			}
			if r, ok := keyRange[e.Key]; ok && r != e.Range {
				p.add("range", "%s: %s in range %d, earlier in range %d: %s", s.Name, e.Key, e.Range, r, e)
			}
			keyRange[e.Key] = e.Range
			switch last, started := lastKey[e.Key], s.Start[e.Range]; {
			case e.Version == last:
				p.add("duplicate", "%s: %s %s repeats the version of the one before (%s)", s.Name, e.Key, e, neighbours(byKey[si][e.Key], last))
			case e.Version < last:
				p.add("order", "%s: %s %s after v%s", s.Name, e.Key, e, fmtVersion(last))
			case e.Version <= started:
				p.add("order", "%s: %s %s is not above its start in range %d (v%s)", s.Name, e.Key, e, e.Range, fmtVersion(started))
			case e.Version <= lastRange[e.Range]:
				p.add("range order", "%s: %s %s after v%s of range %d (a cursor there would skip it)",
					s.Name, e.Key, e, fmtVersion(lastRange[e.Range]), e.Range)
			}
			lastKey[e.Key] = max(lastKey[e.Key], e.Version)
			lastRange[e.Range] = max(lastRange[e.Range], e.Version)
			byKey[si][e.Key] = append(byKey[si][e.Key], e)

			if union[e.Key] == nil {
				union[e.Key] = map[uint64]seenEvent{}
			}
			if u, ok := union[e.Key][e.Version]; !ok {
				union[e.Key][e.Version] = seenEvent{e, s.Name}
			} else if u.e.Kind != e.Kind || u.e.Value != e.Value {
				p.add("disagree", "%s at v%s: %s has %s, %s has %s", e.Key, fmtVersion(e.Version), u.stream, u.e, s.Name, e)
			}
			rv := [2]uint64{uint64(e.Range), e.Version}
			if k, ok := rangeKey[rv]; !ok {
				rangeKey[rv] = e.Key
			} else if k != e.Key {
				p.add("disagree", "range %d's v%s is a change of both %s and %s (%s: %s)", e.Range, fmtVersion(e.Version), k, e.Key, s.Name, e)
			}
		}
	}

	keys := append([]string(nil), in.Keys...)
	sort.Strings(keys)
	for _, k := range keys {
		kw := writes[k]
		sum.Writes += len(kw.changed)
		versions := make([]uint64, 0, len(union[k]))
		for v := range union[k] {
			versions = append(versions, v)
		}
		sort.Slice(versions, func(i, j int) bool { return versions[i] < versions[j] })
		for si, s := range in.Streams {
			evs := byKey[si][k]
			if r, ok := keyRange[k]; ok {
				checkGaps(&p, s, k, r, evs, versions, union[k])
			}
			checkExplained(&p, s, k, kw, evs)
			checkAcknowledged(&p, s, k, kw, evs)
			if final, ok := in.Final[k]; ok && s.Complete {
				state, at := "", "no events"
				if len(evs) > 0 {
					state, at = evs[len(evs)-1].state(), evs[len(evs)-1].String()
				}
				if (len(evs) > 0 || s.StartAt < kw.first) && state != final {
					p.add("final", "%s leaves %s at %s (last event: %s), the final reads returned %s",
						s.Name, k, kvModel.DescribeState(state), at, kvModel.DescribeState(final))
				}
			}
		}
	}
	sum.Problems = p.list()
	return sum
}

// seenEvent is an event and the stream that saw it first.
type seenEvent struct {
	e      watchEvent
	stream string
}

func (s seenEvent) String() string { return fmt.Sprintf("%s, seen by %s", s.e, s.stream) }

// checkGaps is (b)'s no-gap rule for stream s and key k in range r:
// versions are the key's versions in every stream, in order.
func checkGaps(p *problemList, s *watchStream, k string, r int, evs []watchEvent, versions []uint64, union map[uint64]seenEvent) {
	have := make(map[uint64]bool, len(evs))
	for _, e := range evs {
		have[e.Version] = true
	}
	for _, v := range versions {
		if v <= s.Start[r] || !s.Complete && v > s.End[r] || have[v] {
			continue
		}
		p.add("gap", "%s misses %s's %s; around it it has: %s", s.Name, k, union[v], neighbours(evs, v))
	}
}

// checkExplained is (c)'s rule that every event of stream s for key k is
// one some write could have made. Where the stream began before the key's
// first write, it knows the key's state before each event (absent at
// first: the cluster starts empty), and holds an Incr's sum and a delete
// to it.
func checkExplained(p *problemList, s *watchStream, k string, kw *keyWrites, evs []watchEvent) {
	known, prev := s.StartAt < kw.first, ""
	count := map[string]int{}
	for _, e := range evs {
		switch e.Kind {
		case gridkv.EventExpire:
			p.add("invented", "%s: %s %s, but the workload sets no TTL", s.Name, k, e)
		case gridkv.EventDelete:
			switch {
			case !kw.deletes && len(kw.cadOld) == 0:
				p.add("invented", "%s: %s %s, but no Delete or CompareAndDelete of it may have applied", s.Name, k, e)
			case known && prev == "":
				p.add("invented", "%s: %s %s deletes an absent key (a Delete of an absent key changes nothing)", s.Name, k, e)
			case known && !kw.deletes && !kw.cadOld[prev]:
				p.add("invented", "%s: %s %s deletes %s, but no Delete of the key may have applied, nor a CompareAndDelete of that value",
					s.Name, k, e, kvModel.DescribeState(prev))
			}
		case gridkv.EventSet:
			count[e.Value]++
			if e.Expires {
				p.add("invented", "%s: %s %s, but the workload sets no TTL", s.Name, k, e)
			}
			n, isCounter := counter(e.Value)
			switch ref, refused := kw.refused[e.Value]; {
			case kw.stores[e.Value] > 0:
			case refused:
				p.add("invented", "%s: %s %s stores the value of a write refused for certain: %s", s.Name, k, e, describeOp(ref))
			case e.Value == "" || !isCounter || !kw.incrs:
				p.add("invented", "%s: %s %s stores a value no write wrote", s.Name, k, e)
			case known:
				if was, ok := counter(prev); !ok || !kw.deltas[n-was] {
					p.add("invented", "%s: %s %s follows %s: no Incr of the key added %d", s.Name, k, e, kvModel.DescribeState(prev), n-was)
				}
			}
		}
		prev = e.state()
	}
	for v, c := range count {
		if kw.uniqueValue(v) && c > kw.stores[v] {
			p.add("duplicate", "%s: %s holds %d events storing %q, which %s wrote once", s.Name, k, c, v, describeOp(kw.storeOp[v]))
		}
	}
}

// checkAcknowledged is (c)'s rule that the writes that certainly changed
// key k, in the window stream s covers, are events in it, and in real-time
// order. A stream that ran to the end covers every write invoked after it
// began. One that ended early covers a write w only if it holds the event
// of a put or CAS x invoked after w was acknowledged: x committed after w,
// so w's event comes before x's in the stream.
func checkAcknowledged(p *problemList, s *watchStream, k string, kw *keyWrites, evs []watchEvent) {
	coverEnd := infinity
	pos := map[string]int{} // unique value -> its event's index
	for i, e := range evs {
		if e.Kind == gridkv.EventSet && kw.uniqueValue(e.Value) {
			pos[e.Value] = i
		}
	}
	if !s.Complete {
		coverEnd = 0
		for v := range pos {
			coverEnd = max(coverEnd, kw.storeOp[v].Call)
		}
	}
	type want struct {
		kind  gridkv.EventKind
		value string
	}
	need := map[want][]porcupine.Operation{}
	have := map[want]int{}
	for _, e := range evs {
		have[want{e.Kind, e.Value}]++
	}
	type placed struct {
		op  porcupine.Operation
		pos int
	}
	var ordered []placed
	for _, op := range kw.changed {
		if op.Call <= s.StartAt || op.Return >= coverEnd {
			continue
		}
		kind, value := effect(op)
		need[want{kind, value}] = append(need[want{kind, value}], op)
		if i, ok := pos[value]; ok && kind == gridkv.EventSet && kw.uniqueValue(value) {
			ordered = append(ordered, placed{op, i})
		}
	}
	wants := make([]want, 0, len(need))
	for w := range need {
		wants = append(wants, w)
	}
	sort.Slice(wants, func(i, j int) bool { return need[wants[i]][0].Call < need[wants[j]][0].Call })
	for _, w := range wants {
		ops := need[w]
		if len(ops) <= have[w] {
			continue
		}
		what := fmt.Sprintf("%s %q", w.kind, w.value)
		if w.kind != gridkv.EventSet {
			what = w.kind.String()
		}
		var descs []string
		for _, op := range ops {
			descs = append(descs, describeOp(op))
		}
		p.add("missing", "%s (began %s) has %d %s events of %s, but %d acknowledged writes made one: %s; around the first it has: %s",
			s.Name, fmtAt(s.StartAt), have[w], what, k, len(ops), strings.Join(descs, "; "), neighboursAt(evs, ops[0].Call))
	}
	// Real time: w1 acknowledged before w2 was invoked comes first.
	realTimeInversions(ordered,
		func(w placed) int64 { return w.op.Call }, func(w placed) int64 { return w.op.Return },
		func(w placed) int { return w.pos },
		func(w1, w2 placed) {
			p.add("order", "%s has %s's %s before %s, but %s was acknowledged before %s was invoked",
				s.Name, k, evs[w2.pos], evs[w1.pos], describeOp(w1.op), describeOp(w2.op))
		})
}

// neighboursAt shows a stream's events of one key received around time t.
func neighboursAt(evs []watchEvent, t int64) string {
	i := sort.Search(len(evs), func(i int) bool { return evs[i].At >= t })
	lo, hi := max(0, i-1), min(len(evs), i+2)
	if lo >= hi {
		return "no events of the key"
	}
	var parts []string
	for _, e := range evs[lo:hi] {
		parts = append(parts, e.String())
	}
	return strings.Join(parts, ", ")
}
