package tests

import (
	"slices"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/gridkv/gridkv/gridkv"
)

// watchFixture is a small run: key k in range 3 (and j in range 3 too,
// for the per-range rules), its writes, two watchers and the final reads.
type watchFixture struct {
	ops     []porcupine.Operation
	refused []failedOp
	streams []*watchStream
	final   map[string]string
}

func ver(seq uint64) uint64 { return 1<<48 | seq }

func set(key, value string, seq uint64, at int64) watchEvent {
	return watchEvent{Kind: gridkv.EventSet, Key: key, Value: value, Version: ver(seq), Range: 3, At: at}
}

func del(key string, seq uint64, at int64) watchEvent {
	return watchEvent{Kind: gridkv.EventDelete, Key: key, Version: ver(seq), Range: 3, At: at}
}

// newWatchFixture: put a, put b, put 5, incr +2 -> 7, compare-and-delete
// of 7, put c, all acknowledged one after another; both watchers see all
// six changes, from before the first.
func newWatchFixture() *watchFixture {
	put := func(v string) Input { return Input{Kind: OpPut, Key: "k", Value: v} }
	f := &watchFixture{
		ops: []porcupine.Operation{
			op(0, put("a"), 10, Output{}, 20),
			op(0, put("b"), 30, Output{}, 40),
			op(1, put("5"), 50, Output{}, 60),
			op(1, Input{Kind: OpIncr, Key: "k", Delta: 2}, 70, Output{Sum: 7}, 80),
			op(2, Input{Kind: OpCAD, Key: "k", Old: "7"}, 90, Output{Swapped: true}, 100),
			op(0, put("c"), 110, Output{}, 120),
			op(1, Input{Kind: OpGet, Key: "k"}, 130, Output{Value: "c"}, 140),
		},
		final: map[string]string{"k": "c"},
	}
	for i := 0; i < 2; i++ {
		f.streams = append(f.streams, &watchStream{
			Name: []string{"w0", "w1"}[i], Start: gridkv.Cursor{3: 0}, StartAt: 1, Complete: true,
			Events: []watchEvent{set("k", "a", 1, 25), set("k", "b", 2, 45), set("k", "5", 3, 65),
				set("k", "7", 4, 85), del("k", 5, 105), set("k", "c", 6, 125)},
			End:      gridkv.Cursor{3: ver(6)},
			Segments: []watchSegment{{Node: "n0", Start: gridkv.Cursor{3: 0}}},
		})
	}
	return f
}

func (f *watchFixture) check() WatchSummary {
	return checkWatches(watchInput{Streams: f.streams, Ops: f.ops, Refused: f.refused, Keys: []string{"k"}, Final: f.final})
}

func without(evs []watchEvent, seq uint64) []watchEvent {
	return slices.DeleteFunc(slices.Clone(evs), func(e watchEvent) bool { return e.Version == ver(seq) })
}

// Hand-made streams, each broken in one way, and the problems the check
// must report for it.
func TestWatchCheckVerdicts(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(f *watchFixture)
		kinds []string // problem kinds that must be among those reported; nil: none may be
	}{
		{"clean", func(*watchFixture) {}, nil},
		{"one stream misses an event (gap)", func(f *watchFixture) {
			f.streams[1].Events = without(f.streams[1].Events, 2)
		}, []string{"gap", "missing"}},
		{"every stream misses an acknowledged write", func(f *watchFixture) {
			for _, s := range f.streams {
				s.Events = without(s.Events, 2)
			}
		}, []string{"missing"}},
		{"a missing incr: its sum is not there", func(f *watchFixture) {
			for _, s := range f.streams {
				s.Events = without(s.Events, 4)
			}
		}, []string{"missing", "invented"}}, // and a delete of 5, which no compare-and-delete matched
		{"an event twice (duplicate)", func(f *watchFixture) {
			e := f.streams[1].Events
			f.streams[1].Events = append(e[:3:3], append([]watchEvent{e[2]}, e[3:]...)...)
		}, []string{"duplicate"}},
		{"the same change twice under two versions", func(f *watchFixture) {
			for _, s := range f.streams {
				s.Events = append(s.Events[:2:2], append([]watchEvent{set("k", "b", 3, 46)},
					set("k", "5", 4, 65), set("k", "7", 5, 85), del("k", 6, 105), set("k", "c", 7, 125))...)
				s.End[3] = ver(7)
			}
		}, []string{"duplicate"}},
		{"two events reordered", func(f *watchFixture) {
			e := f.streams[1].Events
			e[2], e[3] = e[3], e[2]
		}, []string{"order"}},
		{"two changes swapped under the right versions", func(f *watchFixture) {
			e := f.streams[1].Events
			e[0].Value, e[1].Value = e[1].Value, e[0].Value
		}, []string{"disagree", "order"}},
		{"a put and a sum swapped under the right versions", func(f *watchFixture) {
			e := f.streams[1].Events
			e[1].Value, e[3].Value = e[3].Value, e[1].Value
		}, []string{"disagree", "invented"}},
		{"a wrong value", func(f *watchFixture) {
			f.streams[1].Events[1].Value = "x"
		}, []string{"disagree", "invented"}},
		{"a wrong value in every stream", func(f *watchFixture) {
			for _, s := range f.streams {
				s.Events[1].Value = "x"
			}
		}, []string{"invented", "missing"}},
		{"a wrong sum", func(f *watchFixture) {
			for _, s := range f.streams {
				s.Events[3].Value = "8"
			}
		}, []string{"invented", "missing"}},
		{"the last change missing at the end", func(f *watchFixture) {
			f.streams[1].Events = without(f.streams[1].Events, 6)
		}, []string{"gap", "missing", "final"}},
		{"the final reads disagree with every stream", func(f *watchFixture) {
			f.final["k"] = "b"
		}, []string{"final"}},
		{"an event at the start cursor", func(f *watchFixture) {
			f.streams[1].Start[3] = ver(1)
		}, []string{"order"}},
		{"a delete of an absent key", func(f *watchFixture) {
			f.ops = append(f.ops, op(3, Input{Kind: OpDelete, Key: "k"}, 2, Output{}, 5))
			for _, s := range f.streams {
				s.Events = append([]watchEvent{del("k", 1, 6)}, s.Events...)
				for i := 1; i < len(s.Events); i++ {
					s.Events[i].Version++
				}
				s.End[3] = ver(7)
			}
		}, []string{"invented"}},
		{"a delete of a present key", func(f *watchFixture) {
			f.ops = append(f.ops, op(3, Input{Kind: OpDelete, Key: "k"}, 126, Output{}, 128),
				op(0, Input{Kind: OpPut, Key: "k", Value: "d"}, 129, Output{}, 129))
			f.final["k"] = "d"
			for _, s := range f.streams {
				s.Events = append(s.Events, del("k", 7, 127), set("k", "d", 8, 130))
				s.End[3] = ver(8)
			}
		}, nil},
		{"an expiry (the workload sets no TTL)", func(f *watchFixture) {
			f.streams[1].Events[5].Expires = true
		}, []string{"invented"}},
		{"a refused write's value", func(f *watchFixture) {
			f.refused = append(f.refused, failedOp{call: 111, in: Input{Kind: OpPut, Key: "k", Value: "z"}})
			for _, s := range f.streams {
				s.Events[5].Value = "z"
			}
		}, []string{"invented", "missing"}},
		{"a write of unknown outcome may show", func(f *watchFixture) {
			f.ops = append(f.ops, op(2, Input{Kind: OpPut, Key: "k", Value: "u"}, 41, Output{Unknown: true}, infinity))
			f.streams[0].Events = append(f.streams[0].Events[:2:2], append([]watchEvent{set("k", "u", 3, 47)},
				set("k", "5", 4, 65), set("k", "7", 5, 85), del("k", 6, 105), set("k", "c", 7, 125))...)
			f.streams[1].Events = slices.Clone(f.streams[0].Events)
			for _, s := range f.streams {
				s.End[3] = ver(7)
			}
		}, nil},
		{"an event of a key nobody wrote", func(f *watchFixture) {
			f.streams[1].Events = append(f.streams[1].Events, set("zz", "a", 9, 130))
		}, []string{"invented"}},
		{"two keys at one version of a range", func(f *watchFixture) {
			f.ops = append(f.ops, op(3, Input{Kind: OpPut, Key: "j", Value: "q"}, 121, Output{}, 122))
			f.streams[0].Events = append(f.streams[0].Events, set("j", "q", 6, 126))
		}, []string{"disagree"}},
		{"a range's versions out of order across keys", func(f *watchFixture) {
			f.ops = append(f.ops, op(3, Input{Kind: OpPut, Key: "j", Value: "q"}, 121, Output{}, 122))
			for _, s := range f.streams {
				s.Events = append(s.Events[:5:5], set("k", "c", 7, 125), set("j", "q", 6, 126))
				s.End[3] = ver(7)
			}
		}, []string{"range order"}},
		{"a watch that ended with ErrCompacted", func(f *watchFixture) {
			s := f.streams[1]
			s.Complete, s.EndErr, s.End = false, gridkv.ErrCompacted.Error(), gridkv.Cursor{3: ver(3)}
			s.Events = s.Events[:3]
		}, []string{"compacted"}},
		{"an early end still covers what it passed", func(f *watchFixture) {
			s := f.streams[1]
			s.Complete, s.EndErr, s.End = false, gridkv.ErrCompacted.Error(), gridkv.Cursor{3: ver(3)}
			s.Events = []watchEvent{s.Events[0], s.Events[2]}
		}, []string{"compacted", "gap"}},
		{"an early end covers the writes acknowledged before a put it holds was invoked", func(f *watchFixture) {
			f.streams = f.streams[1:] // no other stream to show the gap
			s := f.streams[0]
			s.Complete, s.EndErr, s.End = false, gridkv.ErrCompacted.Error(), gridkv.Cursor{3: ver(6)}
			s.Events = without(s.Events, 2)
		}, []string{"compacted", "missing"}},
		{"a resumed watch that began elsewhere than its cursor", func(f *watchFixture) {
			f.streams[1].Segments = append(f.streams[1].Segments,
				watchSegment{Node: "n1", Resumed: true, From: gridkv.Cursor{3: ver(3)}, Start: gridkv.Cursor{3: ver(4)}})
		}, []string{"seam"}},
		{"a seamless resume", func(f *watchFixture) {
			f.streams[1].Segments = append(f.streams[1].Segments,
				watchSegment{Node: "n1", Resumed: true, From: gridkv.Cursor{3: ver(3)}, Start: gridkv.Cursor{3: ver(3)}})
		}, nil},
		{"a put acknowledged before another was invoked comes first", func(f *watchFixture) {
			// Both streams agree, with versions in order: only real time
			// shows it.
			for _, s := range f.streams {
				s.Events[0].Value, s.Events[1].Value = "b", "a"
			}
		}, []string{"order"}},
		{"a watcher that began after the key's first write", func(f *watchFixture) {
			s := f.streams[1]
			s.Start, s.StartAt = gridkv.Cursor{3: ver(2)}, 42
			s.Events = s.Events[2:]
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newWatchFixture()
			c.edit(f)
			sum := f.check()
			if c.kinds == nil {
				if len(sum.Problems) > 0 {
					t.Fatalf("problems in a clean run:\n%s", strings.Join(sum.Problems, "\n"))
				}
				return
			}
			for _, k := range c.kinds {
				if !slices.ContainsFunc(sum.Problems, func(p string) bool { return strings.HasPrefix(p, "watch "+k+":") }) {
					t.Errorf("no %q problem among:\n%s", k, strings.Join(sum.Problems, "\n"))
				}
			}
			t.Logf("\n%s", strings.Join(sum.Problems, "\n"))
		})
	}
}

func TestWatchCheckCounts(t *testing.T) {
	f := newWatchFixture()
	f.streams[0].Events = append(f.streams[0].Events, watchEvent{Kind: gridkv.EventProgress, Version: ver(9), Range: 3})
	f.streams[0].Segments = append(f.streams[0].Segments,
		watchSegment{Node: "n1", Resumed: true, From: gridkv.Cursor{3: ver(9)}, Start: gridkv.Cursor{3: ver(9)}})
	sum := f.check()
	if sum.Watchers != 2 || sum.Events != 12 || sum.Progress != 1 || sum.Keys != 1 || sum.Resumes != 1 || len(sum.Problems) != 0 {
		t.Fatalf("%+v", sum)
	}
}

// A broken run stays readable: a few problems of each kind, then a count.
func TestWatchCheckProblemsAreCapped(t *testing.T) {
	f := newWatchFixture()
	for i := 0; i < 20; i++ {
		f.streams = append(f.streams, &watchStream{Name: "empty", Start: gridkv.Cursor{3: 0}, Complete: true,
			End: gridkv.Cursor{3: 0}})
	}
	sum := f.check()
	gaps := 0
	for _, p := range sum.Problems {
		if strings.HasPrefix(p, "watch gap:") {
			gaps++
		}
	}
	if gaps != problemsPerKind+1 || !slices.ContainsFunc(sum.Problems, func(p string) bool { return strings.HasPrefix(p, "watch gap: ... and ") }) {
		t.Fatalf("gap lines: %d\n%s", gaps, strings.Join(sum.Problems, "\n"))
	}
}
