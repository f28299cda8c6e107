// Package rlog adapts a *slog.Logger to the hclog.Logger that hashicorp/raft
// and memberlist log through, so GridKV logs through one slog handler, and
// collapses what repeats: raft writes a failure per heartbeat to a peer
// that is down, every few milliseconds in every group; a Collapser makes
// that one line per message and peer per interval, and one line when the
// peer answers again.
//
//	c := rlog.NewCollapser(rlog.CollapseOptions{}) // one per node
//	rc.Logger = rlog.New(log, "raft", slog.LevelWarn, c)
//	...
//	c.Reachable(log, addr) // on every answer from addr: cheap
//	...
//	c.Flush() // when the node stops: the counts still pending
package rlog

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// New returns an hclog.Logger that writes to l. Raft is chatty at Info, so
// records below minLevel are dropped before any formatting. Warnings and
// errors pass through c, keyed by the peer they name (see peerOf), so a
// repeated one is one line per interval; c may be shared by every raft of
// a node, and may be nil (every record written).
func New(l *slog.Logger, name string, minLevel slog.Level, c *Collapser) hclog.Logger {
	return &logger{l: l, name: name, min: minLevel, c: c}
}

type logger struct {
	l       *slog.Logger
	name    string
	min     slog.Level
	c       *Collapser
	implied []interface{}
}

var _ hclog.Logger = (*logger)(nil)

func toSlog(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// expected lowers the level of raft's warnings that, in their context,
// report the protocol working as designed, not a fault:
//   - "failed to get previous log" when the follower's log ends before the
//     entry (previous-index > last-index): a follower behind its leader,
//     which then sends older entries (a new or restarted follower, and the
//     commit notices raftgroup sends ahead of slower followers). Missing an
//     entry its log should hold stays a warning.
//   - "appendEntries rejected, sending older logs": the leader's side of
//     the same catch-up.
//   - "heartbeat timeout reached, starting election" when no leader was
//     ever known (last-leader-id empty): a group forming. Losing a known
//     leader stays a warning.
func expected(lv slog.Level, msg string, args []interface{}) slog.Level {
	if lv != slog.LevelWarn {
		return lv
	}
	switch msg {
	case "failed to get previous log":
		prev, okPrev := arg(args, "previous-index").(uint64)
		last, okLast := arg(args, "last-index").(uint64)
		if okPrev && okLast && prev > last {
			return slog.LevelDebug
		}
	case "appendEntries rejected, sending older logs":
		return slog.LevelInfo
	case "heartbeat timeout reached, starting election":
		if id := arg(args, "last-leader-id"); id != nil && fmt.Sprint(id) == "" {
			return slog.LevelInfo
		}
	}
	return lv
}

// arg is the value of key in hclog's key-value list, or nil.
func arg(args []interface{}, key string) interface{} {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			return args[i+1]
		}
	}
	return nil
}

func (g *logger) Log(level hclog.Level, msg string, args ...interface{}) {
	lv := expected(toSlog(level), msg, args)
	if lv < g.min || !g.l.Enabled(context.Background(), lv) {
		return
	}
	all := make([]interface{}, 0, len(g.implied)+len(args)+2)
	if g.name != "" {
		all = append(all, "component", g.name)
	}
	all = append(append(all, g.implied...), args...)
	if lv < slog.LevelWarn {
		g.l.Log(context.Background(), lv, msg, all...)
		return
	}
	peer, unreachable := peerOf(msg, args)
	if unreachable {
		g.c.Failure(g.l, lv, msg, peer, all...)
	} else {
		g.c.Log(g.l, lv, msg, peer, all...)
	}
}

// peerOf is the peer a raft record names, by the attribute raft gives it
// ("peer", "target", "from", "candidate", "server-id"), and whether the
// record says the peer could not be reached: a "failed to ..." naming it
// by address ("failed to heartbeat to", "failed to appendEntries to",
// "failed to make requestVote RPC", ...), the address raftgroup's
// transport reports answers from (Collapser.Reachable).
func peerOf(msg string, args []interface{}) (peer string, unreachable bool) {
	for _, key := range [...]string{"peer", "target", "from", "candidate", "server-id"} {
		var byAddr bool
		switch v := arg(args, key).(type) {
		case nil:
			continue
		case raft.Server:
			peer, byAddr = string(v.Address), true
		case raft.ServerAddress:
			peer, byAddr = string(v), true
		case raft.ServerID:
			peer = string(v)
		case string:
			peer = v
		default:
			peer = fmt.Sprint(v)
		}
		return peer, byAddr && (key == "peer" || key == "target") && strings.HasPrefix(msg, "failed to ")
	}
	return "", false
}

func (g *logger) Trace(msg string, args ...interface{}) { g.Log(hclog.Trace, msg, args...) }
func (g *logger) Debug(msg string, args ...interface{}) { g.Log(hclog.Debug, msg, args...) }
func (g *logger) Info(msg string, args ...interface{})  { g.Log(hclog.Info, msg, args...) }
func (g *logger) Warn(msg string, args ...interface{})  { g.Log(hclog.Warn, msg, args...) }
func (g *logger) Error(msg string, args ...interface{}) { g.Log(hclog.Error, msg, args...) }

func (g *logger) enabled(level hclog.Level) bool {
	lv := toSlog(level)
	return lv >= g.min && g.l.Enabled(context.Background(), lv)
}

func (g *logger) IsTrace() bool { return g.enabled(hclog.Trace) }
func (g *logger) IsDebug() bool { return g.enabled(hclog.Debug) }
func (g *logger) IsInfo() bool  { return g.enabled(hclog.Info) }
func (g *logger) IsWarn() bool  { return g.enabled(hclog.Warn) }
func (g *logger) IsError() bool { return g.enabled(hclog.Error) }

func (g *logger) ImpliedArgs() []interface{} { return g.implied }

func (g *logger) With(args ...interface{}) hclog.Logger {
	c := *g
	c.implied = append(append([]interface{}{}, g.implied...), args...)
	return &c
}

func (g *logger) Name() string { return g.name }

func (g *logger) Named(name string) hclog.Logger {
	c := *g
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (g *logger) ResetNamed(name string) hclog.Logger {
	c := *g
	c.name = name
	return &c
}

// SetLevel is ignored: the level belongs to the slog handler.
func (g *logger) SetLevel(hclog.Level) {}

func (g *logger) GetLevel() hclog.Level {
	switch {
	case g.min <= slog.LevelDebug:
		return hclog.Debug
	case g.min <= slog.LevelInfo:
		return hclog.Info
	case g.min <= slog.LevelWarn:
		return hclog.Warn
	}
	return hclog.Error
}

func (g *logger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(g.StandardWriter(opts), "", 0)
}

func (g *logger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		g.Info(string(p))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
