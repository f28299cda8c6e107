package fsm

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"google.golang.org/protobuf/proto"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// toOp is the reference reading of one non-batch command, via proto.
func toOp(c *fsmpb.Command) op {
	switch x := c.Op.(type) {
	case *fsmpb.Command_Set:
		return op{kind: opSet, rng: x.Set.Range, key: x.Set.Key, value: x.Set.Value, ttl: x.Set.TtlNanos}
	case *fsmpb.Command_Delete:
		return op{kind: opDelete, rng: x.Delete.Range, key: x.Delete.Key}
	case *fsmpb.Command_Cas:
		return op{kind: opCAS, rng: x.Cas.Range, key: x.Cas.Key, value: x.Cas.New, old: x.Cas.Old, oldAbsent: x.Cas.OldAbsent, ttl: x.Cas.TtlNanos}
	case *fsmpb.Command_CompareAndDelete:
		return op{kind: opCAD, rng: x.CompareAndDelete.Range, key: x.CompareAndDelete.Key, old: x.CompareAndDelete.Old}
	case *fsmpb.Command_Incr:
		return op{kind: opIncr, rng: x.Incr.Range, key: x.Incr.Key, delta: x.Incr.Delta}
	case *fsmpb.Command_Expire:
		return op{kind: opExpire, rng: x.Expire.Range, key: x.Expire.Key, ttl: x.Expire.TtlNanos}
	case *fsmpb.Command_CompareVersionAndSwap:
		c := x.CompareVersionAndSwap
		return op{kind: opCVS, rng: c.Range, key: c.Key, version: c.Version, value: c.New, ttl: c.TtlNanos}
	case *fsmpb.Command_Batch:
		return op{kind: opBatch}
	case *fsmpb.Command_Genesis:
		return op{kind: opGenesis, ranges: x.Genesis.Ranges}
	case *fsmpb.Command_Freeze:
		return op{kind: opFreeze, rng: x.Freeze.Range, hand: &handoffOp{epoch: x.Freeze.Epoch, peer: x.Freeze.Target}}
	case *fsmpb.Command_Incoming:
		i := x.Incoming
		return op{kind: opIncoming, rng: i.Range, hand: &handoffOp{epoch: i.Epoch, peer: i.Source, count: i.Count, bytes: i.Bytes}}
	case *fsmpb.Command_Chunk:
		c := x.Chunk
		h := &handoffOp{epoch: c.Epoch, after: c.After, last: c.Last,
			trailer: Tally{Count: c.Trailer.GetCount(), Bytes: c.Trailer.GetBytes(), Digest: c.Trailer.GetDigest()}}
		for _, e := range c.Entries {
			h.entries = append(h.entries, chunkEntry{key: e.Key, value: e.Value, version: e.Version, expireAt: e.ExpireAt})
		}
		return op{kind: opChunk, rng: c.Range, hand: h}
	case *fsmpb.Command_Release:
		return op{kind: opRelease, rng: x.Release.Range, hand: &handoffOp{epoch: x.Release.Epoch}}
	case *fsmpb.Command_Unfreeze:
		return op{kind: opUnfreeze, rng: x.Unfreeze.Range, hand: &handoffOp{epoch: x.Unfreeze.Epoch}}
	case *fsmpb.Command_Activate:
		return op{kind: opActivate, rng: x.Activate.Range, hand: &handoffOp{epoch: x.Activate.Epoch}}
	case *fsmpb.Command_Abort:
		return op{kind: opAbort, rng: x.Abort.Range, hand: &handoffOp{epoch: x.Abort.Epoch}}
	}
	return op{}
}

func sameHandoff(a, b *handoffOp) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.epoch != b.epoch || a.peer != b.peer || a.count != b.count || a.bytes != b.bytes ||
		!bytes.Equal(a.after, b.after) || a.last != b.last || a.trailer != b.trailer || len(a.entries) != len(b.entries) {
		return false
	}
	for i, x := range a.entries {
		y := b.entries[i]
		if !bytes.Equal(x.key, y.key) || !bytes.Equal(x.value, y.value) || x.version != y.version || x.expireAt != y.expireAt {
			return false
		}
	}
	return true
}

func sameOp(a, b op) bool {
	return a.kind == b.kind && a.rng == b.rng && bytes.Equal(a.key, b.key) && bytes.Equal(a.value, b.value) &&
		bytes.Equal(a.old, b.old) && a.oldAbsent == b.oldAbsent && a.ttl == b.ttl && a.delta == b.delta && a.version == b.version && slices.Equal(a.ranges, b.ranges) &&
		sameHandoff(a.hand, b.hand)
}

func randomCommand(rng *rand.Rand, depth int) *fsmpb.Command {
	blob := func() []byte {
		if rng.IntN(4) == 0 {
			return nil
		}
		b := make([]byte, rng.IntN(20))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	ttl := func() int64 { return int64(rng.IntN(3)) * rng.Int64N(1<<40) }
	if rng.IntN(2) == 0 {
		return randomHandoff(rng, blob)
	}
	switch rng.IntN(9) {
	case 8:
		return &fsmpb.Command{Op: &fsmpb.Command_CompareVersionAndSwap{CompareVersionAndSwap: &fsmpb.CompareVersionAndSwap{
			Range: randomRange(rng), Key: blob(), Version: uint64(rng.IntN(2)) * rng.Uint64(), New: blob(), TtlNanos: ttl()}}}
	case 5:
		return &fsmpb.Command{Op: &fsmpb.Command_CompareAndDelete{CompareAndDelete: &fsmpb.CompareAndDelete{Range: randomRange(rng), Key: blob(), Old: blob()}}}
	case 6:
		return &fsmpb.Command{Op: &fsmpb.Command_Incr{Incr: &fsmpb.Incr{Range: randomRange(rng), Key: blob(), Delta: int64(rng.Uint64())}}}
	case 7:
		return &fsmpb.Command{Op: &fsmpb.Command_Expire{Expire: &fsmpb.Expire{Range: randomRange(rng), Key: blob(), TtlNanos: ttl()}}}
	case 0:
		return &fsmpb.Command{Op: &fsmpb.Command_Set{Set: &fsmpb.Set{Range: randomRange(rng), Key: blob(), Value: blob(), TtlNanos: ttl()}}}
	case 1:
		return &fsmpb.Command{Op: &fsmpb.Command_Delete{Delete: &fsmpb.Delete{Range: randomRange(rng), Key: blob()}}}
	case 2:
		return &fsmpb.Command{Op: &fsmpb.Command_Cas{Cas: &fsmpb.CompareAndSwap{Range: randomRange(rng), Key: blob(), OldAbsent: rng.IntN(2) == 0, Old: blob(), New: blob(), TtlNanos: ttl()}}}
	case 3:
		g := &fsmpb.Genesis{}
		for i := rng.IntN(6); i > 0; i-- {
			g.Ranges = append(g.Ranges, randomRange(rng))
		}
		return &fsmpb.Command{Op: &fsmpb.Command_Genesis{Genesis: g}}
	default:
		if depth > 1 {
			return &fsmpb.Command{}
		}
		var ops []*fsmpb.Command
		for i := rng.IntN(5); i > 0; i-- {
			ops = append(ops, randomCommand(rng, depth+1))
		}
		return BatchOp(ops...)
	}
}

// randomHandoff is one of the handoff commands, with random fields.
func randomHandoff(rng *rand.Rand, blob func() []byte) *fsmpb.Command {
	num := func() int64 { return int64(rng.IntN(3)-1) * rng.Int64N(1<<62) } // 0, negative or positive
	r, e := int(randomRange(rng)), uint64(num())
	switch rng.IntN(7) {
	case 0:
		return FreezeOp(r, e, int(num()))
	case 1:
		return IncomingOp(r, e, int(num()), num(), num())
	case 2:
		var entries []RangeEntry
		for i := rng.IntN(4); i > 0; i-- {
			entries = append(entries, RangeEntry{Key: string(blob()), Entry: Entry{Value: blob(), Version: uint64(num()), ExpireAt: num()}})
		}
		return ChunkOp(r, e, string(blob()), entries, rng.IntN(2) == 0, Tally{num(), num(), uint64(num())})
	case 3:
		return ReleaseOp(r, e)
	case 4:
		return UnfreezeOp(r, e)
	case 5:
		return ActivateOp(r, e)
	}
	return AbortOp(r, e)
}

// randomRange is 0 (left out of the encoding), small, or any uint32.
func randomRange(rng *rand.Rand) uint32 {
	switch rng.IntN(3) {
	case 0:
		return 0
	case 1:
		return uint32(rng.IntN(1024))
	}
	return rng.Uint32()
}

func TestDecodeMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 20000; i++ {
		cmd := randomCommand(rng, 0)
		data, err := proto.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		ops, batch, err := decodeCommand(data, nil)
		if err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
		var want []op
		if b := cmd.GetBatch(); b != nil {
			for _, sub := range b.Ops {
				want = append(want, toOp(sub))
			}
		} else {
			want = []op{toOp(cmd)}
		}
		if batch != (cmd.GetBatch() != nil) || len(ops) != len(want) {
			t.Fatalf("%v: got %d ops batch=%v", cmd, len(ops), batch)
		}
		for j := range ops {
			if !sameOp(ops[j], want[j]) {
				t.Fatalf("%v op %d: got %v want %v", cmd, j, ops[j], want[j])
			}
		}
	}
}

func FuzzDecodeCommand(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 20; i++ {
		data, _ := proto.Marshal(randomCommand(rng, 0))
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ops, _, err := decodeCommand(data, nil)
		if err == nil && len(ops) > len(data)+1 {
			t.Fatalf("%d ops from %d bytes", len(ops), len(data))
		}
		// Whatever decodes must apply without panicking, to owned ranges too.
		owning(t, Options{Ranges: 4}, 0, 1, 2, 3).Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
	})
}

func TestAppendMatchesEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	blob := func() []byte {
		if rng.IntN(3) == 0 {
			return nil
		}
		b := make([]byte, rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	for i := 0; i < 5000; i++ {
		key := string(blob())
		r := int(randomRange(rng))
		ranges := make([]int, rng.IntN(4))
		for j := range ranges {
			ranges[j] = int(randomRange(rng))
		}
		ttl := time.Duration(rng.IntN(3)) * time.Duration(rng.Int64N(1<<40))
		value, old := blob(), blob()
		if rng.IntN(4) == 0 {
			old = []byte{}
		}
		num := func() int64 { return int64(rng.IntN(3)-1) * rng.Int64N(1<<62) }
		e, peer, count, size := uint64(num()), int(num()), num(), num()
		var entries []RangeEntry
		for j := rng.IntN(4); j > 0; j-- {
			entries = append(entries, RangeEntry{Key: string(blob()), Entry: Entry{Value: blob(), Version: uint64(num()), ExpireAt: num()}})
		}
		last, trailer := rng.IntN(2) == 0, Tally{num(), num(), uint64(num())}
		for _, c := range []struct {
			got  []byte
			want *fsmpb.Command
		}{
			{AppendSet(nil, r, key, value, ttl), SetOp(r, key, value, ttl)},
			{AppendDelete(nil, r, key), DeleteOp(r, key)},
			{AppendCAS(nil, r, key, old, value, ttl), CASOp(r, key, old, value, ttl)},
			{AppendCAD(nil, r, key, old), CADOp(r, key, old)},
			{AppendIncr(nil, r, key, int64(e)), IncrOp(r, key, int64(e))},
			{AppendExpire(nil, r, key, ttl), ExpireOp(r, key, ttl)},
			{AppendCVS(nil, r, key, e, value, ttl), CVSOp(r, key, e, value, ttl)},
			{AppendGenesis(nil, ranges), GenesisOp(ranges)},
			{AppendFreeze(nil, r, e, peer), FreezeOp(r, e, peer)},
			{AppendIncoming(nil, r, e, peer, count, size), IncomingOp(r, e, peer, count, size)},
			{AppendChunk(nil, r, e, key, entries, last, trailer), ChunkOp(r, e, key, entries, last, trailer)},
			{AppendRelease(nil, r, e), ReleaseOp(r, e)},
			{AppendUnfreeze(nil, r, e), UnfreezeOp(r, e)},
			{AppendActivate(nil, r, e), ActivateOp(r, e)},
			{AppendAbort(nil, r, e), AbortOp(r, e)},
		} {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(c.want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(c.got, want) {
				t.Fatalf("%v: got %x want %x", c.want, c.got, want)
			}
		}
	}
}
