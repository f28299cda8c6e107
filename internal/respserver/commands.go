package respserver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// command is one RESP command: its arity as Redis counts it (the command
// name included; negative -n: at least n) and its handler, which writes
// exactly one reply.
type command struct {
	arity int
	run   func(s *Server, ctx context.Context, c *conn, args [][]byte)
}

// commands maps lower-case command names to their handlers. It is filled
// in init: the handlers refer to the table (COMMAND COUNT).
var commands map[string]command

func init() {
	commands = map[string]command{
		"ping":    {-1, cmdPing},
		"echo":    {2, cmdEcho},
		"quit":    {1, cmdQuit},
		"select":  {2, cmdSelect},
		"get":     {2, cmdGet},
		"set":     {-3, cmdSet},
		"del":     {-2, cmdDel},
		"exists":  {-2, cmdExists},
		"incr":    {2, cmdIncr},
		"decr":    {2, cmdIncr},
		"incrby":  {3, cmdIncr},
		"decrby":  {3, cmdIncr},
		"expire":  {3, cmdExpire},
		"ttl":     {2, cmdTTL},
		"pttl":    {2, cmdTTL},
		"cas":     {4, cmdCAS},
		"cad":     {3, cmdCAD},
		"scan":    {-2, cmdScan},
		"info":    {-1, cmdInfo},
		"client":  {-2, cmdClient},
		"command": {-1, cmdCommand},
		"config":  {-2, cmdConfig},
	}
}

// exec runs one command, with a context bounded by the request timeout,
// and writes its reply.
func (s *Server) exec(c *conn, args [][]byte) {
	name := strings.ToLower(string(args[0]))
	cmd, ok := commands[name]
	if !ok {
		var b strings.Builder
		fmt.Fprintf(&b, "ERR unknown command '%s', with args beginning with:", clip(args[0]))
		for _, a := range args[1:min(len(args), 4)] {
			fmt.Fprintf(&b, " '%s'", clip(a))
		}
		c.wr.WriteError(oneLine(b.String()))
		return
	}
	if cmd.arity > 0 && len(args) != cmd.arity || cmd.arity < 0 && len(args) < -cmd.arity {
		c.wr.WriteError(fmt.Sprintf("ERR wrong number of arguments for '%s' command", name))
		return
	}
	ctx, cancel := context.WithTimeout(s.base, s.timeout)
	defer cancel()
	cmd.run(s, ctx, c, args)
}

// clip shortens an argument quoted in an error reply.
func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// oneLine keeps an error reply on one line, as RESP requires.
func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// writeErr writes err as a Redis-style error reply; see the package doc
// for the mapping.
func writeErr(c *conn, err error) {
	msg := oneLine(err.Error())
	switch {
	case errors.Is(err, gridkv.ErrTimeout) && strings.Contains(msg, "outcome unknown"):
		c.wr.WriteError("TIMEOUT outcome unknown: " + msg)
	case errors.Is(err, gridkv.ErrTimeout):
		c.wr.WriteError("TIMEOUT " + msg)
	case errors.Is(err, gridkv.ErrUnavailable):
		c.wr.WriteError("TRYAGAIN " + msg)
	case errors.Is(err, gridkv.ErrMemoryLimit):
		c.wr.WriteError("OOM " + msg)
	default: // ErrInvalid, ErrClosed, anything else
		c.wr.WriteError("ERR " + msg)
	}
}

const (
	errSyntax    = "ERR syntax error"
	errNotInt    = "ERR value is not an integer or out of range"
	errBadExpire = "ERR invalid expire time in '%s' command"
)

func cmdPing(s *Server, ctx context.Context, c *conn, args [][]byte) {
	switch len(args) {
	case 1:
		c.wr.WriteString("PONG")
	case 2:
		c.wr.WriteBulk(args[1])
	default:
		c.wr.WriteError("ERR wrong number of arguments for 'ping' command")
	}
}

func cmdEcho(s *Server, ctx context.Context, c *conn, args [][]byte) { c.wr.WriteBulk(args[1]) }

func cmdQuit(s *Server, ctx context.Context, c *conn, args [][]byte) {
	c.wr.WriteString("OK")
	c.quit = true
}

// cmdSelect accepts database 0, the only one.
func cmdSelect(s *Server, ctx context.Context, c *conn, args [][]byte) {
	if string(args[1]) != "0" {
		c.wr.WriteError("ERR DB index is out of range")
		return
	}
	c.wr.WriteString("OK")
}

func cmdGet(s *Server, ctx context.Context, c *conn, args [][]byte) {
	v, err := s.db.Get(ctx, string(args[1]), c.mode.get...)
	switch {
	case errors.Is(err, gridkv.ErrNotFound):
		c.wr.WriteNull()
	case err != nil:
		writeErr(c, err)
	default:
		c.wr.WriteBulk(v)
	}
}

// cmdSet is SET key value [EX seconds | PX milliseconds] [NX | XX].
func cmdSet(s *Server, ctx context.Context, c *conn, args [][]byte) {
	key, value := string(args[1]), args[2]
	var ttl time.Duration
	var nx, xx, expiry bool
	for i := 3; i < len(args); i++ {
		switch opt := strings.ToUpper(string(args[i])); opt {
		case "NX":
			nx = true
		case "XX":
			xx = true
		case "EX", "PX":
			if expiry || i+1 == len(args) {
				c.wr.WriteError(errSyntax)
				return
			}
			i++
			n, err := strconv.ParseInt(string(args[i]), 10, 64)
			if err != nil {
				c.wr.WriteError(errNotInt)
				return
			}
			unit := time.Second
			if opt == "PX" {
				unit = time.Millisecond
			}
			if n <= 0 || n > int64(math.MaxInt64/unit) {
				c.wr.WriteError(fmt.Sprintf(errBadExpire, "set"))
				return
			}
			ttl, expiry = time.Duration(n)*unit, true
		default:
			c.wr.WriteError(errSyntax)
			return
		}
	}
	if nx && xx {
		c.wr.WriteError(errSyntax)
		return
	}
	var opts []gridkv.WriteOption
	if expiry {
		opts = append(opts, gridkv.WithTTL(ttl))
	}
	var done bool
	var err error
	switch {
	case nx:
		done, err = s.db.CompareAndSwap(ctx, key, nil, value, opts...)
	case xx:
		done, err = setIfExists(ctx, s.db, key, value, opts)
	default:
		err, done = s.db.Set(ctx, key, value, opts...), true
	}
	switch {
	case err != nil:
		writeErr(c, err)
	case done:
		c.wr.WriteString("OK")
	default:
		c.wr.WriteNull()
	}
}

// setIfExists is SET XX: it reads the key's version (a linearizable read)
// and writes over exactly that version, again while other writes come
// between; false once a read finds the key absent.
func setIfExists(ctx context.Context, db *gridkv.DB, key string, value []byte, opts []gridkv.WriteOption) (bool, error) {
	for {
		e, err := db.GetEntry(ctx, key)
		if errors.Is(err, gridkv.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		swapped, err := db.CompareVersionAndSwap(ctx, key, e.Version, value, opts...)
		if err != nil || swapped {
			return swapped, err
		}
	}
}

// deleteIfExists deletes key and reports whether it was there: it reads
// the value (linearizably) and deletes only if the value is still that
// one, again while other writes come between. So true means this call
// removed a key that existed. A value larger than this node's
// MaxValueBytes (written through a node with a higher limit) cannot be
// compared: the key is deleted unconditionally and counted.
func deleteIfExists(ctx context.Context, db *gridkv.DB, key string) (bool, error) {
	for {
		v, err := db.Get(ctx, key)
		if errors.Is(err, gridkv.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		deleted, err := db.CompareAndDelete(ctx, key, v)
		if errors.Is(err, gridkv.ErrInvalid) {
			return true, db.Delete(ctx, key)
		}
		if err != nil || deleted {
			return deleted, err
		}
	}
}

// cmdDel counts the keys it removed that existed (see deleteIfExists). A
// key named twice counts once. On an error it stops there: keys before it
// are deleted, the ones after it are not tried.
func cmdDel(s *Server, ctx context.Context, c *conn, args [][]byte) {
	n := 0
	seen := map[string]bool{}
	for _, k := range args[1:] {
		key := string(k)
		if seen[key] {
			continue
		}
		seen[key] = true
		deleted, err := deleteIfExists(ctx, s.db, key)
		if err != nil {
			writeErr(c, err)
			return
		}
		if deleted {
			n++
		}
	}
	c.wr.WriteInt(n)
}

// cmdExists counts the keys present; a key named twice counts twice, as
// in Redis. Reads in the connection's read mode.
func cmdExists(s *Server, ctx context.Context, c *conn, args [][]byte) {
	n := 0
	for _, k := range args[1:] {
		_, err := s.db.Get(ctx, string(k), c.mode.get...)
		switch {
		case errors.Is(err, gridkv.ErrNotFound):
		case err != nil:
			writeErr(c, err)
			return
		default:
			n++
		}
	}
	c.wr.WriteInt(n)
}

// cmdIncr is INCR, DECR, INCRBY and DECRBY.
func cmdIncr(s *Server, ctx context.Context, c *conn, args [][]byte) {
	delta := int64(1)
	name := strings.ToLower(string(args[0]))
	if len(args) == 3 {
		d, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil {
			c.wr.WriteError(errNotInt)
			return
		}
		delta = d
	}
	if strings.HasPrefix(name, "decr") {
		if delta == math.MinInt64 {
			c.wr.WriteError("ERR decrement would overflow")
			return
		}
		delta = -delta
	}
	n, err := s.db.Incr(ctx, string(args[1]), delta)
	if err != nil {
		writeErr(c, err)
		return
	}
	c.wr.WriteInt64(n)
}

// cmdExpire is EXPIRE key seconds: 1 if the key exists and now expires
// that many seconds from now, 0 if it is absent. seconds <= 0 deletes the
// key, as in Redis (1 if it existed).
func cmdExpire(s *Server, ctx context.Context, c *conn, args [][]byte) {
	sec, err := strconv.ParseInt(string(args[2]), 10, 64)
	if err != nil {
		c.wr.WriteError(errNotInt)
		return
	}
	if sec > int64(math.MaxInt64/time.Second) {
		c.wr.WriteError(fmt.Sprintf(errBadExpire, "expire"))
		return
	}
	var ok bool
	if sec <= 0 {
		ok, err = deleteIfExists(ctx, s.db, string(args[1]))
	} else {
		ok, err = s.db.Expire(ctx, string(args[1]), time.Duration(sec)*time.Second)
	}
	if err != nil {
		writeErr(c, err)
		return
	}
	c.wr.WriteInt(boolInt(ok))
}

// cmdTTL is TTL and PTTL: -2 if the key is absent, -1 if it never
// expires, else the time left (by this node's clock against the expiry
// the leader set), in seconds (rounded) or milliseconds.
func cmdTTL(s *Server, ctx context.Context, c *conn, args [][]byte) {
	e, err := s.db.GetEntry(ctx, string(args[1]), c.mode.get...)
	switch {
	case errors.Is(err, gridkv.ErrNotFound):
		c.wr.WriteInt(-2)
		return
	case err != nil:
		writeErr(c, err)
		return
	case e.ExpireAt.IsZero():
		c.wr.WriteInt(-1)
		return
	}
	left := max(time.Until(e.ExpireAt).Milliseconds(), 0)
	if strings.EqualFold(string(args[0]), "ttl") {
		left = (left + 500) / 1000
	}
	c.wr.WriteInt64(left)
}

// cmdCAS is CAS key old new: :1 if key held old and now holds new, else :0.
func cmdCAS(s *Server, ctx context.Context, c *conn, args [][]byte) {
	ok, err := s.db.CompareAndSwap(ctx, string(args[1]), args[2], args[3])
	if err != nil {
		writeErr(c, err)
		return
	}
	c.wr.WriteInt(boolInt(ok))
}

// cmdCAD is CAD key value: :1 if key held value and is now deleted, else :0.
func cmdCAD(s *Server, ctx context.Context, c *conn, args [][]byte) {
	ok, err := s.db.CompareAndDelete(ctx, string(args[1]), args[2])
	if err != nil {
		writeErr(c, err)
		return
	}
	c.wr.WriteInt(boolInt(ok))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
