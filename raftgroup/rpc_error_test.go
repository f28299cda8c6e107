package raftgroup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// An error relayed from another node fits on one line, whatever its text.
func TestCallErrorIsOneLine(t *testing.T) {
	c := newTestCluster(t, 2, 0)
	c.hosts[1].SetRPCHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		return nil, errors.Join(errors.New("first"), errors.New("second"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.hosts[0].Call(ctx, c.hosts[1].ID(), c.hosts[1].Addr(), []byte("x"))
	if err == nil || strings.ContainsAny(err.Error(), "\r\n") || !strings.Contains(err.Error(), "first second") {
		t.Fatalf("error %q: want both parts on one line", err)
	}
}
