package raftgroup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// RPCHandler serves a node-to-node request (Host.Call) and returns the
// answer. ctx ends when the caller's deadline passes or the host closes.
// Handlers run concurrently, one goroutine per request.
type RPCHandler func(ctx context.Context, req []byte) ([]byte, error)

// NotSent reports whether a Call failed before its request could leave
// this node (the peer was unreachable), so it certainly was not served.
func NotSent(err error) bool { return errors.Is(err, errUnreachable) || errors.Is(err, errMuxClosed) }

// oneLine puts an error text from another node on one line (errors.Join,
// for one, spans lines), so that the errors it ends up in do too.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// ErrNoHandler: the called node has no RPC handler set.
var ErrNoHandler = errors.New("raftgroup: no rpc handler on the called node")

// SetRPCHandler installs the handler for Host.Call requests from other
// nodes; they share the Raft listener and connections.
func (h *Host) SetRPCHandler(fn RPCHandler) { h.mux.rpc.Store(&fn) }

// Call sends req to the node listening at addr and returns its handler's
// answer. Many calls may be in flight on one connection. The caller's
// deadline travels with the request; without one, RPCTimeout applies.
// An error wrapping ErrTimeout means the request may have been served.
func (h *Host) Call(ctx context.Context, addr string, req []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	timeout := h.cfg.RPCTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, context.DeadlineExceeded)
		}
	}
	type answer struct {
		body []byte
		err  error
	}
	done := make(chan answer, 1)
	h.mux.startWithin(addr, 0, kindRPC, false, timeout,
		func(b []byte) []byte {
			b = binary.AppendUvarint(b, uint64(timeout))
			return append(b, req...)
		},
		func(body []byte, err error) { done <- answer{body, err} })
	select {
	case a := <-done:
		if errors.Is(a.err, errRPCTimeout) {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, a.err)
		}
		if a.err != nil {
			return nil, a.err
		}
		if len(a.body) == 0 {
			return nil, errShortFrame
		}
		if a.body[0] == statusErr {
			return nil, &remoteError{msg: string(a.body[1:])}
		}
		return a.body[1:], nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
}

// serveRPC runs the handler for one request and sends its answer.
func (m *mux) serveRPC(w *frameWriter, h frameHeader, body []byte) {
	timeout, n := binary.Uvarint(body)
	var answer []byte
	var err error
	switch p := m.rpc.Load(); {
	case n <= 0:
		err = errShortFrame
	case p == nil:
		err = ErrNoHandler
	default:
		ctx, cancel := context.WithTimeout(m.ctx, time.Duration(timeout))
		answer, err = (*p)(ctx, body[n:])
		cancel()
	}
	fb := getFrame()
	b := appendHeader(*fb, frameHeader{kind: kindRPC | respFlag, id: h.id})
	if err != nil {
		b = append(b, statusErr)
		b = append(b, err.Error()...)
	} else {
		b = append(b, statusOK)
		b = append(b, answer...)
	}
	finishFrame(b, 0)
	w.send(b, false)
	*fb = b
	putFrame(fb)
}
