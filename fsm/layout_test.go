package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

func TestLayoutCommands(t *testing.T) {
	f := New(Options{Layout: true})
	idx := uint64(0)
	apply := func(cmd *fsmpb.Command) Result {
		idx++
		return single(t, f.Apply(logAt(t, idx, 0, cmd)))
	}
	a := []Server{{"a#1", "127.0.0.1:1"}, {"b#1", "127.0.0.1:2"}}
	steps := []struct {
		name string
		cmd  *fsmpb.Command
		err  error
		want Layout
	}{
		{"create before the layout is set", CreateGroupOp(0, 0, a), ErrPrecondition, Layout{}},
		{"layout over groups that do not exist", LayoutOp(0, 2, 3), ErrPrecondition, Layout{}},
		{"first layout", LayoutOp(0, 2, 2), nil, Layout{Epoch: 1, Genesis: 2, Groups: 2}},
		{"replayed at an old epoch", LayoutOp(0, 2, 2), ErrPrecondition, Layout{Epoch: 1, Genesis: 2, Groups: 2}},
		{"genesis changed", LayoutOp(1, 3, 3), ErrPrecondition, Layout{Epoch: 1, Genesis: 2, Groups: 2}},
		{"create a gap", CreateGroupOp(1, 3, a), ErrPrecondition, Layout{Epoch: 1, Genesis: 2, Groups: 2}},
		{"create without servers", CreateGroupOp(1, 2, nil), ErrBadCommand, Layout{Epoch: 1, Genesis: 2, Groups: 2}},
		{"fewer groups than at genesis", LayoutOp(1, 2, 1), ErrBadCommand, Layout{Epoch: 1, Genesis: 2, Groups: 2}},
		{"create group 2", CreateGroupOp(1, 2, a), nil, Layout{Epoch: 2, Genesis: 2, Groups: 2, Created: []Created{{2, a}}}},
		{"place over 4, one missing", LayoutOp(2, 2, 4), ErrPrecondition, Layout{Epoch: 2, Genesis: 2, Groups: 2, Created: []Created{{2, a}}}},
		// Not placed over yet: created again, with another set at a new Gen.
		{"create group 2 again", CreateGroupOp(2, 2, a[:1]), nil, Layout{Epoch: 3, Genesis: 2, Groups: 2, Created: []Created{{3, a[:1]}}}},
		{"place over 3", LayoutOp(3, 2, 3), nil, Layout{Epoch: 4, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}}}},
		{"create a placed-over group again", CreateGroupOp(4, 2, a), ErrPrecondition, Layout{Epoch: 4, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}}}},
		{"create a genesis group", CreateGroupOp(4, 1, a), ErrPrecondition, Layout{Epoch: 4, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}}}},
		{"shrink", LayoutOp(4, 2, 2), ErrPrecondition, Layout{Epoch: 4, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}}}},
		{"create group 3", CreateGroupOp(4, 3, a), nil, Layout{Epoch: 5, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}}}},
		// Recoveries: any existing group, placed over or genesis, one server.
		{"recover with two servers", recoverTwo(5, 1, a), ErrBadCommand, Layout{Epoch: 5, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}}}},
		{"recover a group that does not exist", RecoverGroupOp(5, 4, a[1]), ErrPrecondition, Layout{Epoch: 5, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}}}},
		{"recover genesis group 1", RecoverGroupOp(5, 1, a[1]), nil, Layout{Epoch: 6, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}},
			Recovered: []Recovered{{1, Created{6, a[1:]}}}}},
		{"recover group 0", RecoverGroupOp(6, 0, a[0]), nil, Layout{Epoch: 7, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}},
			Recovered: []Recovered{{0, Created{7, a[:1]}}, {1, Created{6, a[1:]}}}}},
		{"recover placed-over group 2", RecoverGroupOp(7, 2, a[1]), nil, Layout{Epoch: 8, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}},
			Recovered: []Recovered{{0, Created{7, a[:1]}}, {1, Created{6, a[1:]}}, {2, Created{8, a[1:]}}}}},
		{"recover group 1 again", RecoverGroupOp(8, 1, a[0]), nil, Layout{Epoch: 9, Genesis: 2, Groups: 3, Created: []Created{{3, a[:1]}, {5, a}},
			Recovered: []Recovered{{0, Created{7, a[:1]}}, {1, Created{9, a[:1]}}, {2, Created{8, a[1:]}}}}},
	}
	for _, s := range steps {
		r := apply(s.cmd)
		if !errors.Is(r.Err, s.err) || (s.err == nil) != (r.Err == nil) {
			t.Fatalf("%s: err %v, want %v", s.name, r.Err, s.err)
		}
		if got := f.Layout(); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("%s: layout %+v, want %+v", s.name, got, s.want)
		}
	}
	if c, ok := f.Layout().Group(3); !ok || !reflect.DeepEqual(c.Servers, a) || f.Layout().Gen(3) != 5 {
		t.Fatalf("group 3: %+v %v", c, ok)
	}
	if c, ok := f.Layout().Group(1); !ok || f.Layout().Gen(1) != 9 || !reflect.DeepEqual(c.Servers, a[:1]) {
		t.Fatalf("recovered genesis group 1: %+v %v", c, ok)
	}
	if s, ok := f.Layout().RecoveredAt(2, 8); !ok || s != a[1] || f.Layout().Gen(2) != 8 {
		t.Fatalf("recovered group 2: %+v %v, gen %d", s, ok, f.Layout().Gen(2))
	}
	if _, ok := f.Layout().RecoveredAt(3, 5); ok {
		t.Fatal("a created group counts as recovered")
	}
	if _, ok := New(Options{Layout: true}).Layout().Group(1); ok {
		t.Fatal("a genesis group has a created server set")
	}

	// It survives a snapshot; a group that does not hold the layout
	// refuses both the commands and such a snapshot.
	snap, _ := f.Snapshot()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := New(Options{Layout: true})
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.Layout(), f.Layout()) {
		t.Fatalf("restored %+v, want %+v", g.Layout(), f.Layout())
	}
	if err := New(Options{}).Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err == nil {
		t.Fatal("a group that does not hold the layout restored one")
	}
	other := New(Options{})
	if r := single(t, other.Apply(logAt(t, 1, 0, LayoutOp(0, 2, 2)))); !errors.Is(r.Err, ErrBadCommand) || other.Layout().Epoch != 0 {
		t.Fatalf("layout applied in another group: %+v", r)
	}
	if rs := f.Apply(logAt(t, idx+1, 0, BatchOp(LayoutOp(5, 2, 3)))).([]Result); !errors.Is(rs[0].Err, ErrBadCommand) {
		t.Fatalf("layout inside a batch: %+v", rs)
	}
}

func TestLayoutEncoding(t *testing.T) {
	l := Layout{Epoch: 9, Genesis: 6, Groups: 7, Created: []Created{{3, []Server{{"a#1", "x:1"}, {"b#2", "y:2"}}}, {7, []Server{{"c#3", ""}}}},
		Recovered: []Recovered{{0, Created{9, []Server{{"a#1", "x:1"}}}}, {6, Created{8, []Server{{"b#2", "y:2"}}}}}}
	b := AppendLayout([]byte{9}, l)
	got, err := DecodeLayout(b[1:])
	if err != nil || !reflect.DeepEqual(got, l) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, l)
	}
	for cut := range len(b) - 1 {
		if _, err := DecodeLayout(b[1 : 1+cut]); err == nil {
			t.Fatalf("truncated at %d accepted", cut)
		}
	}
	if _, err := DecodeLayout(append(b[1:], 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	for name, bad := range map[string]Layout{
		"groups at epoch 0":      {Genesis: 2, Groups: 2},
		"no genesis":             {Epoch: 1},
		"fewer than at genesis":  {Epoch: 1, Genesis: 2, Groups: 1},
		"a gen twice":            {Epoch: 3, Genesis: 1, Groups: 1, Created: []Created{{2, []Server{{"a", ""}}}, {2, []Server{{"b", ""}}}}},
		"a gen past the epoch":   {Epoch: 3, Genesis: 1, Groups: 1, Created: []Created{{4, []Server{{"a", ""}}}}},
		"recovered out of order": {Epoch: 3, Genesis: 2, Groups: 2, Recovered: []Recovered{{1, Created{2, []Server{{"a", ""}}}}, {0, Created{3, []Server{{"a", ""}}}}}},
		"recovered, no group":    {Epoch: 3, Genesis: 2, Groups: 2, Recovered: []Recovered{{2, Created{2, []Server{{"a", ""}}}}}},
		"recovered, gen twice":   {Epoch: 3, Genesis: 2, Groups: 3, Created: []Created{{2, []Server{{"a", ""}}}}, Recovered: []Recovered{{0, Created{2, []Server{{"a", ""}}}}}},
	} {
		if _, err := DecodeLayout(AppendLayout(nil, bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// recoverTwo is a recovery's CreateGroup naming two servers, which apply
// refuses.
func recoverTwo(epoch uint64, g int, servers []Server) *fsmpb.Command {
	cmd := CreateGroupOp(epoch, g, servers)
	cmd.GetCreateGroup().Recovered = true
	return cmd
}

// LayoutAfter replays the layout commands among log entries as Apply
// does: those that fit apply, others (a stale epoch, not a layout command,
// not decodable) change nothing.
func TestLayoutAfter(t *testing.T) {
	enc := func(cmd *fsmpb.Command) []byte {
		b, err := Encode(cmd)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := []Server{{"a#1", "127.0.0.1:1"}}
	start := Layout{Epoch: 3, Genesis: 2, Groups: 2}
	entries := [][]byte{
		enc(SetOp(0, "k", []byte("v"), 0)),
		enc(LayoutOp(1, 2, 2)), // stale epoch
		enc(CreateGroupOp(3, 2, a)),
		{0xff, 0xff},
		enc(LayoutOp(4, 2, 3)),
	}
	got := LayoutAfter(start, entries)
	want := Layout{Epoch: 5, Genesis: 2, Groups: 3, Created: []Created{{4, a}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LayoutAfter = %+v, want %+v", got, want)
	}
	if got := LayoutAfter(start, nil); !reflect.DeepEqual(got, start) {
		t.Fatalf("LayoutAfter with no entries = %+v, want %+v", got, start)
	}
	if start.Epoch != 3 || start.Created != nil {
		t.Fatal("LayoutAfter changed its input")
	}
}
