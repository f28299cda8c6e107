package procctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testhook"
)

// Op is one client operation, as POST /op carries it.
type Op struct {
	Kind  string `json:"kind"` // "get", "set", "delete", "cas", "cad", "incr"
	Key   string `json:"key"`
	Value []byte `json:"value,omitempty"` // set, cas: the new value
	Old   []byte `json:"old"`             // cas: the expected value, nil = absent (an empty one is present); cad: the expected value
	Delta int64  `json:"delta,omitempty"` // incr
	// Read is a get's mode: "" (linearizable, the default), "readindex",
	// "stale"; Quorum > 0 reads with gridkv.Quorum(Quorum).
	Read   string `json:"read,omitempty"`
	Quorum int    `json:"quorum,omitempty"`
	// Timeout bounds the call on the node (its context's deadline).
	Timeout time.Duration `json:"timeout"`
}

// Result is an operation's outcome.
type Result struct {
	Value   []byte `json:"value,omitempty"` // get
	Swapped bool   `json:"swapped,omitempty"`
	Sum     int64  `json:"sum,omitempty"`
	// Err is the error's text; Class says which of gridkv's sentinels it
	// matched: "notfound", "invalid", or "" for any other.
	Err   string `json:"err,omitempty"`
	Class string `json:"class,omitempty"`
}

// Addrs are a node's addresses, as the node program writes them to its
// ready file once it serves.
type Addrs struct {
	Control    string `json:"control"`
	Addr       string `json:"addr"`
	GossipAddr string `json:"gossip_addr"`
}

// Status is what GET /status answers.
type Status struct {
	NodeID     string `json:"node_id"`
	Addr       string `json:"addr"`        // Raft/RPC, bound
	GossipAddr string `json:"gossip_addr"` // bound
	Led        []int  `json:"led"`         // the groups this node leads now
	NotReady   string `json:"not_ready,omitempty"`
}

// Cut is what POST /cut carries: the peer addresses (Raft/RPC and
// gossip) this node drops every message to, replacing the last Cut's.
type Cut struct {
	Peers []string `json:"peers"`
}

// NewHandler serves the control interface over db, whose hooks route its
// traffic through faults and handed back node. Safe for concurrent use.
func NewHandler(db *gridkv.DB, faults *faultnet.Net, node testhook.Node) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /replicas", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, node.Ranges())
	})
	mux.HandleFunc("POST /op", func(w http.ResponseWriter, r *http.Request) {
		var op Op
		if err := json.NewDecoder(r.Body).Decode(&op); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := apply(r.Context(), db, op)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /cut", func(w http.ResponseWriter, r *http.Request) {
		var c Cut
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// Only the sender's side decides (faultnet's rules are per
		// direction, consulted where a message is sent): the peers cut
		// this node off on their side.
		faults.HealAll()
		for _, p := range c.Peers {
			faults.Set(db.Addr(), p, faultnet.Rule{Cut: true})
			faults.Set(db.GossipAddr(), p, faultnet.Rule{Cut: true})
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		code := http.StatusOK
		st := Status{NodeID: db.NodeID(), Addr: db.Addr(), GossipAddr: db.GossipAddr()}
		if v := r.URL.Query().Get("ready"); v != "" {
			wait, err := time.ParseDuration(v)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), wait)
			err = db.WaitReady(ctx)
			cancel()
			if err != nil {
				st.NotReady, code = err.Error(), http.StatusServiceUnavailable
			}
		}
		for _, g := range db.Status().Groups {
			if g.Role == gridkv.RoleLeader {
				st.Led = append(st.Led, g.Group)
			}
		}
		writeJSON(w, code, st)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client sees a short body as an error
}

// apply performs op on db; its error is the request's fault, the
// operation's is in the Result.
func apply(ctx context.Context, db *gridkv.DB, op Op) (Result, error) {
	if op.Timeout <= 0 {
		return Result{}, errors.New("procctl: op without a timeout")
	}
	ctx, cancel := context.WithTimeout(ctx, op.Timeout)
	defer cancel()
	var res Result
	var err error
	switch op.Kind {
	case "get":
		var opts []gridkv.ReadOption
		switch {
		case op.Quorum > 0:
			opts = append(opts, gridkv.Quorum(op.Quorum))
		case op.Read == "readindex":
			opts = append(opts, gridkv.ReadIndex())
		case op.Read == "stale":
			opts = append(opts, gridkv.Stale())
		case op.Read != "":
			return Result{}, fmt.Errorf("procctl: read mode %q", op.Read)
		}
		res.Value, err = db.Get(ctx, op.Key, opts...)
	case "set":
		err = db.Set(ctx, op.Key, op.Value)
	case "delete":
		err = db.Delete(ctx, op.Key)
	case "cas":
		res.Swapped, err = db.CompareAndSwap(ctx, op.Key, op.Old, op.Value)
	case "cad":
		res.Swapped, err = db.CompareAndDelete(ctx, op.Key, op.Old)
	case "incr":
		res.Sum, err = db.Incr(ctx, op.Key, op.Delta)
	default:
		return Result{}, fmt.Errorf("procctl: op kind %q", op.Kind)
	}
	if err != nil {
		res.Err = err.Error()
		switch {
		case errors.Is(err, gridkv.ErrNotFound):
			res.Class = "notfound"
		case errors.Is(err, gridkv.ErrInvalid):
			res.Class = "invalid"
		}
	}
	return res, nil
}

// Client calls one node process's control interface. Safe for
// concurrent use.
type Client struct {
	base string
	hc   *http.Client
	// Grace is how much longer than an operation's own deadline the
	// client waits for its answer (the node answers by its deadline,
	// unless it is paused or gone).
	Grace time.Duration
}

// NewClient returns a client of the node whose control interface listens
// on addr, over transport (which the caller closes).
func NewClient(addr string, transport http.RoundTripper) *Client {
	return &Client{base: "http://" + addr, hc: &http.Client{Transport: transport}, Grace: time.Second}
}

// defaultTimeout bounds an operation whose context has no deadline.
const defaultTimeout = 5 * time.Second

// Do performs op, its Timeout taken from ctx's deadline. A call that got
// no answer is an error that, for a write, says "outcome unknown".
func (c *Client) Do(ctx context.Context, op Op) (Result, error) {
	op.Timeout = defaultTimeout
	if d, ok := ctx.Deadline(); ok {
		op.Timeout = time.Until(d)
	}
	if op.Timeout <= 0 {
		return Result{}, c.lost(op, context.DeadlineExceeded)
	}
	// The node's deadline ends the call; ours only a node that does not
	// answer.
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), op.Timeout+c.Grace)
	defer cancel()
	var res Result
	if err := c.call(hctx, http.MethodPost, "/op", op, &res, http.StatusOK); err != nil {
		if errors.As(err, new(statusError)) {
			// The node answered and refused the request (it was
			// malformed): nothing was applied, and the harness is wrong.
			return Result{}, fmt.Errorf("procctl: %s refused %s: %w", c.base, op.Kind, err)
		}
		return Result{}, c.lost(op, err)
	}
	return res, res.error()
}

func (c *Client) lost(op Op, err error) error {
	if op.Kind == "get" {
		return fmt.Errorf("procctl: %s: no answer: %w", c.base, err)
	}
	return fmt.Errorf("procctl: %s: no answer, write outcome unknown: %w", c.base, err)
}

// error is the operation's error, under gridkv's sentinels.
func (r Result) error() error {
	switch {
	case r.Err == "":
		return nil
	case r.Class == "notfound":
		return remoteError{r.Err, gridkv.ErrNotFound}
	case r.Class == "invalid":
		return remoteError{r.Err, gridkv.ErrInvalid}
	}
	return remoteError{r.Err, nil}
}

// remoteError is an error of the node process: its text, and the sentinel
// it matched there.
type remoteError struct {
	msg string
	is  error
}

func (e remoteError) Error() string { return e.msg }
func (e remoteError) Unwrap() error { return e.is }

// Cut makes the node drop every message it sends to peers (their Raft/RPC
// and gossip addresses); nil heals.
func (c *Client) Cut(ctx context.Context, peers []string) error {
	return c.call(ctx, http.MethodPost, "/cut", Cut{Peers: peers}, nil, http.StatusNoContent)
}

// Status asks for the node's status; with ready > 0, it first waits up to
// that long for the node to be ready, and errs if it is not.
func (c *Client) Status(ctx context.Context, ready time.Duration) (Status, error) {
	path := "/status"
	if ready > 0 {
		path += "?ready=" + url.QueryEscape(ready.String())
	}
	var st Status
	err := c.call(ctx, http.MethodGet, path, nil, &st, http.StatusOK)
	if err != nil && st.NotReady != "" {
		return st, fmt.Errorf("procctl: %s not ready: %s", st.NodeID, st.NotReady)
	}
	return st, err
}

// Replicas asks for the node's replicas, each with a digest of its state
// (testhook.Node.Ranges), for the convergence check.
func (c *Client) Replicas(ctx context.Context) ([]testhook.Replica, error) {
	var reps []testhook.Replica
	err := c.call(ctx, http.MethodGet, "/replicas", nil, &reps, http.StatusOK)
	return reps, err
}

// call sends body (if not nil) as JSON, expects the answer code want and
// decodes the answer into out (if not nil), whatever the code.
func (c *Client) call(ctx context.Context, method, path string, body, out any, want int) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if out != nil && resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("procctl: %s %s: %w", method, path, err)
		}
	}
	if resp.StatusCode != want {
		return statusError(fmt.Sprintf("procctl: %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b)))
	}
	return nil
}

// statusError is an answer with another status code than the one wanted.
type statusError string

func (e statusError) Error() string { return string(e) }
