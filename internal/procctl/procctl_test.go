package procctl

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyNoLeaks(m) }

// serve opens a one-node DB and serves its control interface.
func serve(t *testing.T) (*Client, *gridkv.DB, *faultnet.Net) {
	t.Helper()
	faults := faultnet.New(1)
	h := &testhook.Hooks{Faults: faults}
	cfg := gridkv.Config{NodeID: "n0", Timing: gridkv.LocalTiming(), GroupsPerNode: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	opened, err := testhook.Open(context.Background(), cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	db := opened.(*gridkv.DB)
	srv := httptest.NewServer(NewHandler(db, faults, h.Node()))
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		db.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), tr)
	if _, err := c.Status(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return c, db, faults
}

// The node's outcomes come back under gridkv's sentinels and values.
func TestOperations(t *testing.T) {
	c, _, _ := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	steps := []struct {
		op      Op
		want    Result
		wantErr error // matched with errors.Is; nil: no error
	}{
		{Op{Kind: "get", Key: "k"}, Result{}, gridkv.ErrNotFound},
		{Op{Kind: "cas", Key: "k", Value: []byte("a")}, Result{Swapped: true}, nil}, // nil Old: absent
		{Op{Kind: "get", Key: "k", Quorum: 1}, Result{Value: []byte("a")}, nil},
		{Op{Kind: "incr", Key: "k", Delta: 1}, Result{}, gridkv.ErrInvalid},
		{Op{Kind: "set", Key: "k", Value: []byte("41")}, Result{}, nil},
		{Op{Kind: "incr", Key: "k", Delta: 1}, Result{Sum: 42}, nil},
		{Op{Kind: "cad", Key: "k", Old: []byte("41")}, Result{}, nil},
		{Op{Kind: "cad", Key: "k", Old: []byte("42")}, Result{Swapped: true}, nil},
		{Op{Kind: "get", Key: "k", Read: "readindex"}, Result{}, gridkv.ErrNotFound},
		{Op{Kind: "set", Key: "k", Value: []byte("b")}, Result{}, nil},
		{Op{Kind: "delete", Key: "k"}, Result{}, nil},
		{Op{Kind: "get", Key: "k", Read: "stale"}, Result{}, gridkv.ErrNotFound},
	}
	for i, s := range steps {
		res, err := c.Do(ctx, s.op)
		if s.wantErr == nil && err != nil || s.wantErr != nil && !errors.Is(err, s.wantErr) {
			t.Fatalf("step %d (%s): error %v, want %v", i, s.op.Kind, err, s.wantErr)
		}
		res.Err, res.Class = "", ""
		if string(res.Value) != string(s.want.Value) || res.Swapped != s.want.Swapped || res.Sum != s.want.Sum {
			t.Fatalf("step %d (%s): %+v, want %+v", i, s.op.Kind, res, s.want)
		}
	}
	if _, err := c.Do(ctx, Op{Kind: "nonsense", Key: "k"}); err == nil {
		t.Fatal("an unknown kind of op was accepted")
	}
}

// A call that gets no answer is a failed read, or a write whose outcome
// is unknown: its error says so, as gridkv's do.
func TestNoAnswer(t *testing.T) {
	addr := testutil.FreeAddrs(t, 1)[0] // nobody listens there now
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := NewClient(addr, tr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, kind := range []string{"get", "set", "delete", "cas", "cad", "incr"} {
		_, err := c.Do(ctx, Op{Kind: kind, Key: "k"})
		if err == nil {
			t.Fatalf("%s: no error", kind)
		}
		if unknown := strings.Contains(err.Error(), "outcome unknown"); unknown != (kind != "get") {
			t.Errorf("%s: %v: says outcome unknown: %v", kind, err, unknown)
		}
	}
}

// Cut makes the node drop what it sends to the peers named; an empty
// list heals.
func TestCut(t *testing.T) {
	c, db, faults := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Cut(ctx, []string{"127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if !faults.Cut(db.Addr(), "127.0.0.1:1") || !faults.Cut(db.GossipAddr(), "127.0.0.1:1") {
		t.Fatal("not cut")
	}
	if err := c.Cut(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if faults.Cut(db.Addr(), "127.0.0.1:1") {
		t.Fatal("not healed")
	}
	st, err := c.Status(ctx, 0)
	if err != nil || st.NodeID != "n0" || len(st.Led) != 2 {
		t.Fatalf("status %+v, %v: want n0 leading its 2 groups", st, err)
	}
	reps, err := c.Replicas(ctx)
	if err != nil || len(reps) == 0 {
		t.Fatalf("replicas %v, %v", reps, err)
	}
}

// A compare-and-swap's expected value crosses the wire as it was: absent
// (nil) and present but empty are different expectations.
func TestOpKeepsEmptyOld(t *testing.T) {
	for _, old := range [][]byte{nil, {}, []byte("v")} {
		b, err := json.Marshal(Op{Kind: "cas", Key: "k", Old: old})
		if err != nil {
			t.Fatal(err)
		}
		var got Op
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if (got.Old == nil) != (old == nil) || string(got.Old) != string(old) {
			t.Errorf("Old %q (nil %v) came back as %q (nil %v), via %s", old, old == nil, got.Old, got.Old == nil, b)
		}
	}
}
