package rlog

import (
	"log/slog"
	"testing"

	"github.com/hashicorp/raft"
)

func TestExpected(t *testing.T) {
	for _, c := range []struct {
		name string
		lv   slog.Level
		msg  string
		args []interface{}
		want slog.Level
	}{
		{"follower behind", slog.LevelWarn, "failed to get previous log",
			[]interface{}{"previous-index", uint64(12), "last-index", uint64(10), "error", "log not found"}, slog.LevelDebug},
		{"entry missing within the log", slog.LevelWarn, "failed to get previous log",
			[]interface{}{"previous-index", uint64(8), "last-index", uint64(10), "error", "log not found"}, slog.LevelWarn},
		{"leader backs off", slog.LevelWarn, "appendEntries rejected, sending older logs",
			[]interface{}{"peer", "x", "next", uint64(3)}, slog.LevelInfo},
		{"first election", slog.LevelWarn, "heartbeat timeout reached, starting election",
			[]interface{}{"last-leader-addr", raft.ServerAddress(""), "last-leader-id", raft.ServerID("")}, slog.LevelInfo},
		{"leader lost", slog.LevelWarn, "heartbeat timeout reached, starting election",
			[]interface{}{"last-leader-addr", raft.ServerAddress("127.0.0.1:1"), "last-leader-id", raft.ServerID("a")}, slog.LevelWarn},
		{"other warning", slog.LevelWarn, "failed to contact quorum of nodes, stepping down", nil, slog.LevelWarn},
		{"errors are kept", slog.LevelError, "failed to get previous log",
			[]interface{}{"previous-index", uint64(12), "last-index", uint64(10)}, slog.LevelError},
	} {
		if got := expected(c.lv, c.msg, c.args); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
