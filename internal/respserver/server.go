package respserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/tidwall/redcon"

	"github.com/gridkv/gridkv/gridkv"
)

// Options configure a Server. Zero means the default.
type Options struct {
	// RequestTimeout bounds each command: its context ends this long after
	// the command starts. Default 5s.
	RequestTimeout time.Duration
	// Logger receives connection errors, at Debug, and the temporary
	// accept errors Serve retries, at Warn. Default slog.Default().
	Logger *slog.Logger
	// MaxCursors bounds the SCAN cursors kept (see the package doc); the
	// oldest is dropped first. Default 10000.
	MaxCursors int
	// MaxCursorBytes bounds the bytes of the keys the SCAN cursors hold
	// (a key may be up to 64 KiB); the oldest cursor is dropped first, the
	// newest kept whatever its size. Default 16 MiB.
	MaxCursorBytes int
}

// Server serves the RESP protocol for one gridkv.DB.
//
// Threading: Serve, Shutdown and Clients may be called from any
// goroutine. Each connection is served by one goroutine of its own, which
// runs its commands one at a time, in order; connections run in parallel.
type Server struct {
	db      *gridkv.DB
	timeout time.Duration
	log     *slog.Logger
	cursors *cursorTable
	started time.Time

	// base is the parent of every command's context; cancel ends it when
	// Shutdown gives up waiting.
	base   context.Context
	cancel context.CancelFunc
	// closing is closed when Shutdown begins: it cuts short an accept
	// loop's back-off.
	closing chan struct{}

	mu struct {
		sync.Mutex
		lns      map[net.Listener]struct{}
		conns    map[*conn]struct{}
		stopping bool
	}
	wg sync.WaitGroup // the accept loops and the connections' goroutines
}

// New returns a Server for db. It serves nothing until Serve is called.
func New(db *gridkv.DB, opts Options) *Server {
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxCursors <= 0 {
		opts.MaxCursors = 10000
	}
	if opts.MaxCursorBytes <= 0 {
		opts.MaxCursorBytes = 16 << 20
	}
	s := &Server{db: db, timeout: opts.RequestTimeout, log: opts.Logger,
		cursors: newCursorTable(opts.MaxCursors, opts.MaxCursorBytes), started: time.Now()}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.closing = make(chan struct{})
	s.mu.lns = map[net.Listener]struct{}{}
	s.mu.conns = map[*conn]struct{}{}
	return s
}

// ErrServerClosed is what Serve returns once Shutdown was called.
var ErrServerClosed = errors.New("respserver: server closed")

// Serve accepts connections on ln and serves each in a goroutine of its
// own, until Shutdown; then it returns ErrServerClosed. A temporary accept
// error (too many open files, say) is logged at Warn and retried after a
// back-off, 5ms doubling to 1s, as net/http.Server.Serve does; any other
// accept error ends Serve and is returned. Serve takes ownership of ln: it
// is closed when Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.mu.stopping {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.mu.lns[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.mu.lns, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.stopping() {
				return ErrServerClosed
			}
			if !temporary(err) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("resp: accept failed; retrying", "err", err, "in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.closing:
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		backoff = 0
		c := &conn{nc: nc, wr: redcon.NewWriter(nc), mode: readMode{name: "lease"}}
		s.mu.Lock()
		if s.mu.stopping {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.mu.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// Shutdown stops the server gracefully: it closes the listeners, lets
// every connection finish the commands it has read (their replies are
// sent), then closes the connections; idle connections close at once.
// It returns when every goroutine the server started has ended. If ctx
// ends first, it cancels the commands still running (they answer
// TIMEOUT), closes every connection, waits for the goroutines, and
// returns ctx's error. Shutdown does not close the DB.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.mu.stopping {
		close(s.closing)
	}
	s.mu.stopping = true
	for ln := range s.mu.lns {
		ln.Close()
	}
	for c := range s.mu.conns {
		// Wakes a connection waiting for a command; one running commands
		// sees stopping once it has sent their replies.
		_ = c.nc.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.mu.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// temporary reports whether an accept error may pass (EMFILE, ENFILE,
// ECONNABORTED...): the test net/http.Server.Serve makes. net.Error's
// Temporary is deprecated as ill-defined in general, but for accept errors
// it is what the standard library still relies on.
func temporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

func (s *Server) stopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.stopping
}

// Clients is the number of open connections.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.conns)
}

// conn is one client connection. Its fields are touched only by the
// goroutine serving it (serveConn), but nc, which Shutdown may close.
type conn struct {
	nc   net.Conn
	wr   *redcon.Writer
	name string   // CLIENT SETNAME
	mode readMode // CLIENT READMODE
	quit bool     // QUIT: close once the reply is sent
}

// serveConn reads the connection's commands, a pipeline at a time (all
// the commands already received), runs them in order, and sends their
// replies together.
func (s *Server) serveConn(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.mu.conns, c)
		s.mu.Unlock()
		c.nc.Close()
	}()
	rd := redcon.NewReader(c.nc)
	for {
		cmds, err := rd.ReadCommands()
		if err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.As(err, &ne) {
				// A protocol error: tell the client, as Redis does.
				c.wr.WriteError("ERR Protocol error: " + oneLine(err.Error()))
				_ = c.wr.Flush()
			}
			s.log.Debug("resp: connection ends", "remote", c.nc.RemoteAddr().String(), "err", err)
			return
		}
		for _, cmd := range cmds {
			if len(cmd.Args) == 0 {
				continue
			}
			s.exec(c, cmd.Args)
			if c.quit {
				break
			}
		}
		if err := c.wr.Flush(); err != nil || c.quit || s.stopping() {
			return
		}
	}
}
