package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

type fakeNode struct {
	l      net.Listener
	closed bool
}

func (f *fakeNode) Close() error { f.closed = true; return f.l.Close() }

// A node that finds its address taken makes OpenTogether close the opened
// ones and open all again on new addresses; the others' ctx ends with the
// failure.
func TestOpenTogetherRetriesAddressInUse(t *testing.T) {
	var mu sync.Mutex
	var attempts [][]string // each attempt's addresses, in order
	var first []*fakeNode   // the nodes the first attempt opened
	attempt := func(addrs []string) int {
		mu.Lock()
		defer mu.Unlock()
		for k, a := range attempts {
			if slices.Equal(a, addrs) {
				return k
			}
		}
		attempts = append(attempts, addrs)
		return len(attempts) - 1
	}
	nodes := OpenTogether(t, context.Background(), 3, func(ctx context.Context, i int, addrs []string) (*fakeNode, error) {
		k := attempt(addrs)
		l, err := net.Listen("tcp", addrs[i])
		if err != nil {
			return nil, err
		}
		if k == 0 && i == 1 {
			defer l.Close()
			_, err = net.Listen("tcp", addrs[i]) // taken, as by another process
			return nil, err
		}
		n := &fakeNode{l: l}
		if k == 0 {
			mu.Lock()
			first = append(first, n)
			mu.Unlock()
			<-ctx.Done() // as a node waiting for the others does
		}
		return n, nil
	})
	if len(attempts) != 2 {
		t.Fatalf("attempts on %v: want 2", attempts)
	}
	if len(first) != 2 {
		t.Fatalf("the first attempt opened %d nodes, want 2", len(first))
	}
	for _, n := range first {
		if !n.closed {
			t.Error("a node of the failed attempt was left open")
		}
	}
	for i, n := range nodes {
		if n.l.Addr().String() != attempts[1][i] {
			t.Fatalf("node %d on %s, want %s", i, n.l.Addr(), attempts[1][i])
		}
		n.Close()
	}
}

// fatalTB records a Fatal and ends the goroutine, as testing's does.
type fatalTB struct {
	testing.TB
	fatal string
}

func (f *fatalTB) Fatal(args ...any) { f.fatal = fmt.Sprint(args...); runtime.Goexit() }

// Any other failure fails at once: no second attempt.
func TestOpenTogetherFailsOnOtherErrors(t *testing.T) {
	var calls atomic.Int32
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		OpenTogether(tb, context.Background(), 2, func(ctx context.Context, i int, addrs []string) (*fakeNode, error) {
			calls.Add(1)
			if i == 0 {
				return nil, errors.New("bad config")
			}
			<-ctx.Done() // waiting for the others, until the failure ends it
			return nil, ctx.Err()
		})
	}()
	<-done
	if !strings.Contains(tb.fatal, "bad config") || calls.Load() != 2 {
		t.Fatalf("Fatal(%q) after %d opens: want it to name the failure, after one attempt (2 opens)", tb.fatal, calls.Load())
	}
}
