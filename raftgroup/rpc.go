package raftgroup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"
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

// Call sends req to the node incarnation to, listening at addr, and returns
// its handler's answer. Many calls may be in flight on one connection. The
// caller's deadline travels with the request; without one, RPCTimeout
// applies. An empty req is a ping (see Ping): the handler never sees it. An error wrapping ErrTimeout means the request may have been
// served; one for which NotSent holds means it was not (among them: the
// host at addr runs another incarnation than to).
func (h *Host) Call(ctx context.Context, to raft.ServerID, addr string, req []byte) ([]byte, error) {
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
	h.CallAsync(to, addr, req, timeout, func(body []byte, err error) { done <- answer{body, err} })
	select {
	case a := <-done:
		var remote *remoteError
		if errors.As(a.err, &remote) {
			if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
				// The deadline travels with the request, so the handler
				// gives up about when the caller does (ctx's own timer may
				// not have fired yet): the caller's time-out is the answer.
				return nil, fmt.Errorf("%w: %w", ErrTimeout, context.DeadlineExceeded)
			}
		}
		return a.body, a.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
}

// Ping makes a round trip to the node incarnation to at addr on the
// connection Call uses, without reaching its RPC handler. With TLS
// (Config.TLS), nil means both nodes accepted each other's certificates:
// in TLS 1.3 a client learns that the server refused its certificate only
// from the server's next message, so a handshake alone proves less.
func (h *Host) Ping(ctx context.Context, to raft.ServerID, addr string) error {
	_, err := h.Call(ctx, to, addr, nil)
	return err
}

// CallAsync is Call without a waiting caller: done is called once, from
// another goroutine (the connection's reader or a timer), with the answer
// or an error, as Call would return them; it must not block. The request
// gives up after timeout. It starts no goroutine of its own.
func (h *Host) CallAsync(to raft.ServerID, addr string, req []byte, timeout time.Duration, done func([]byte, error)) {
	h.mux.startWithin(addr, incarnationOf(to), 0, kindRPC, false, timeout,
		func(b []byte) []byte {
			b = binary.AppendUvarint(b, uint64(timeout))
			return append(b, req...)
		},
		func(body []byte, err error) {
			switch {
			case errors.Is(err, errRPCTimeout):
				done(nil, fmt.Errorf("%w: %w", ErrTimeout, err))
			case err != nil:
				done(nil, err)
			case len(body) == 0:
				done(nil, errShortFrame)
			case body[0] == statusErr:
				done(nil, &remoteError{msg: string(body[1:])})
			case body[0] == statusRefused:
				done(nil, refused(body[1:]))
			default:
				done(body[1:], nil)
			}
		})
}

// serveRPC runs the handler for one request and sends its answer.
func (m *mux) serveRPC(p *peer, h frameHeader, body []byte) {
	timeout, n := binary.Uvarint(body)
	var answer []byte
	var err error
	switch p := m.rpc.Load(); {
	case n <= 0:
		err = errShortFrame
	case len(body) == n:
		// An empty request is a ping (Host.Ping), answered here.
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
	p.send(b, false, false, 0)
	*fb = b
	putFrame(fb)
}
