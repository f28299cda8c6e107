package fsm

import (
	"bytes"
	"math/rand/v2"
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
		return op{kind: opSet, key: x.Set.Key, value: x.Set.Value, ttl: x.Set.TtlNanos}
	case *fsmpb.Command_Delete:
		return op{kind: opDelete, key: x.Delete.Key}
	case *fsmpb.Command_Cas:
		return op{kind: opCAS, key: x.Cas.Key, value: x.Cas.New, old: x.Cas.Old, oldAbsent: x.Cas.OldAbsent, ttl: x.Cas.TtlNanos}
	case *fsmpb.Command_Batch:
		return op{kind: opBatch}
	}
	return op{}
}

func sameOp(a, b op) bool {
	return a.kind == b.kind && bytes.Equal(a.key, b.key) && bytes.Equal(a.value, b.value) &&
		bytes.Equal(a.old, b.old) && a.oldAbsent == b.oldAbsent && a.ttl == b.ttl
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
	switch rng.IntN(4) {
	case 0:
		return &fsmpb.Command{Op: &fsmpb.Command_Set{Set: &fsmpb.Set{Key: blob(), Value: blob(), TtlNanos: ttl()}}}
	case 1:
		return &fsmpb.Command{Op: &fsmpb.Command_Delete{Delete: &fsmpb.Delete{Key: blob()}}}
	case 2:
		return &fsmpb.Command{Op: &fsmpb.Command_Cas{Cas: &fsmpb.CompareAndSwap{Key: blob(), OldAbsent: rng.IntN(2) == 0, Old: blob(), New: blob(), TtlNanos: ttl()}}}
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
		// Whatever decodes must apply without panicking.
		New(Options{}).Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
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
		ttl := time.Duration(rng.IntN(3)) * time.Duration(rng.Int64N(1<<40))
		value, old := blob(), blob()
		if rng.IntN(4) == 0 {
			old = []byte{}
		}
		for _, c := range []struct {
			got  []byte
			want *fsmpb.Command
		}{
			{AppendSet(nil, key, value, ttl), SetOp(key, value, ttl)},
			{AppendDelete(nil, key), DeleteOp(key)},
			{AppendCAS(nil, key, old, value, ttl), CASOp(key, old, value, ttl)},
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
