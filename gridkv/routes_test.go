package gridkv

import (
	"testing"
	"time"

	"github.com/gridkv/gridkv/fsm"
)

// The routing table starts at placement (epoch 1) and only rises.
func TestRouteTableOnlyRises(t *testing.T) {
	rt := newRouteTable([]uint16{0, 1, 2})
	if g, e := rt.lookup(1); g != 1 || e != 1 {
		t.Fatalf("initial route %d@%d, want 1@1", g, e)
	}
	steps := []struct {
		g       int
		epoch   uint64
		changed bool
		wantG   int
		wantE   uint64
	}{
		{2, 1, false, 1, 1}, // same epoch: no change
		{2, 3, true, 2, 3},
		{0, 2, false, 2, 3}, // an older answer arriving late
		{0, 5, true, 0, 5},
		{maxGroups, 9, false, 0, 5}, // out of bounds
	}
	for _, s := range steps {
		if got := rt.learn(1, s.g, s.epoch); got != s.changed {
			t.Fatalf("learn(1, %d, %d) = %v", s.g, s.epoch, got)
		}
		if g, e := rt.lookup(1); g != s.wantG || e != s.wantE {
			t.Fatalf("after learn(1, %d, %d): %d@%d, want %d@%d", s.g, s.epoch, g, e, s.wantG, s.wantE)
		}
	}
}

// What a group answers from its record of a range, for each state.
func TestRefuse(t *testing.T) {
	const r, g, other = 5, 1, 2
	for _, c := range []struct {
		rec            fsm.RangeRecord
		genesis        int
		write, indexed bool
		want           byte // 0xff: served
		slow, zero     bool
	}{
		{fsm.RangeRecord{State: fsm.Owned, Epoch: 3}, other, true, false, 0xff, false, false},
		{fsm.RangeRecord{State: fsm.Frozen, Epoch: 2}, g, true, false, stMoving, false, false},
		{fsm.RangeRecord{State: fsm.Frozen, Epoch: 2}, g, false, false, 0xff, true, false},
		{fsm.RangeRecord{State: fsm.Frozen, Epoch: 2}, g, false, true, 0xff, false, false},
		{fsm.RangeRecord{State: fsm.Gone, Epoch: 3, Peer: other}, g, false, true, stWrongGroup, false, false},
		{fsm.RangeRecord{State: fsm.Incoming, Epoch: 2}, other, false, true, stMoving, false, false},
		{fsm.RangeRecord{State: fsm.Sealed, Epoch: 2}, other, true, false, stMoving, false, false},
		{fsm.RangeRecord{}, g, false, false, 0xff, false, true},
		{fsm.RangeRecord{}, g, true, false, stMoving, false, false},
		{fsm.RangeRecord{}, other, false, false, stNotHere, false, false},
		{fsm.RangeRecord{State: fsm.Absent, Epoch: 4}, g, false, true, stNotHere, false, false},
	} {
		ref := refuse(c.rec, r, g, c.genesis, c.write, c.indexed)
		got := byte(0xff)
		if ref.ans != nil {
			got = ref.ans[0]
		}
		if got != c.want || ref.slow != c.slow || ref.zero != c.zero {
			t.Errorf("%+v write=%v indexed=%v genesis=%d: %d slow=%v zero=%v; want %d slow=%v zero=%v",
				c.rec, c.write, c.indexed, c.genesis, got, ref.slow, ref.zero, c.want, c.slow, c.zero)
		}
		if got == stWrongGroup {
			if rr, e, to, ok := decodeWrongGroup(ref.ans[1:]); !ok || rr != r || e != c.rec.Epoch || to != c.rec.Peer {
				t.Errorf("WrongGroup decodes to %d %d %d %v", rr, e, to, ok)
			}
		}
	}
}

func TestCommandRange(t *testing.T) {
	for _, r := range []int{0, 1, 1023, 1 << 19} {
		for _, cmd := range [][]byte{
			fsm.AppendSet(nil, r, "k", []byte("v"), time.Second),
			fsm.AppendDelete(nil, r, "k"),
			fsm.AppendCAS(nil, r, "k", nil, []byte("v"), 0),
			fsm.AppendCAD(nil, r, "k", []byte("v")),
			fsm.AppendIncr(nil, r, "k", 5),
			fsm.AppendExpire(nil, r, "k", time.Second),
			fsm.AppendCVS(nil, r, "k", 1<<50, []byte("v"), time.Second),
		} {
			if got, ok := commandRange(cmd); !ok || got != r {
				t.Fatalf("commandRange = %d, %v; want %d", got, ok, r)
			}
			if _, ok := commandRange(cmd[:len(cmd)-1]); ok {
				t.Fatal("a cut command decoded")
			}
		}
	}
}

func TestRecordWire(t *testing.T) {
	for _, rec := range []fsm.RangeRecord{
		{},
		{State: fsm.Frozen, Epoch: 7, Peer: 3, Since: time.Now().UnixNano(), Count: 12, Bytes: 3400},
		{State: fsm.Gone, Epoch: 1 << 40, Peer: maxGroups - 1},
	} {
		got, ok := decodeRecord(appendRecord(nil, rec))
		if !ok || got != rec {
			t.Fatalf("decodeRecord = %+v, %v; want %+v", got, ok, rec)
		}
	}
	if _, ok := decodeRecord([]byte{byte(fsm.Sealed) + 1, 0, 0, 0, 0, 0}); ok {
		t.Fatal("an unknown state decoded")
	}
}

// T aborts only when S's epoch passed h without a Release to T.
func TestSourceGaveUp(t *testing.T) {
	const h, target = 4, 2
	for _, c := range []struct {
		src  fsm.RangeRecord
		want bool
	}{
		{fsm.RangeRecord{State: fsm.Frozen, Epoch: h, Peer: target}, false},
		{fsm.RangeRecord{State: fsm.Gone, Epoch: h + 1, Peer: target}, false},
		{fsm.RangeRecord{State: fsm.Owned, Epoch: h + 1}, true},
		{fsm.RangeRecord{State: fsm.Gone, Epoch: h + 1, Peer: target + 1}, true},
		{fsm.RangeRecord{State: fsm.Owned, Epoch: h - 1}, false},
		{fsm.RangeRecord{}, false}, // a replica that lags
	} {
		if got := sourceGaveUp(c.src, h, target); got != c.want {
			t.Errorf("sourceGaveUp(%+v) = %v", c.src, got)
		}
	}
}
