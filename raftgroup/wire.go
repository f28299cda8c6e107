package raftgroup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/wire"
)

// Wire format. Every frame on a connection is
//
//	u32 length of the rest | u8 kind | u64 group | u64 request id | u64 to | body
//
// Requests carry a kind below respFlag and, in to, the incarnation of the
// node they are meant for (see ServerID); a host serves only requests
// addressed to its own incarnation. Raft logs live in memory, so a node
// restarted on its old address must never answer for the incarnation that
// ran there before: it would vote, and acknowledge entries, with a log it
// no longer has. The answer to a request carries kind|respFlag, the same
// group and id, to = 0, and a body that starts with a status byte
// (statusOK then the encoded response, statusErr then the error text, or
// statusRefused then the text: the request was not for this incarnation). Integers inside bodies are uvarints, byte strings are
// uvarint-length-prefixed, times are varint unix nanoseconds (0 = zero time).
const (
	kindHello           byte = 1 // body: the sender's listen address; a snapshot install follows
	kindAppendEntries   byte = 2
	kindRequestVote     byte = 3
	kindRequestPreVote  byte = 4
	kindTimeoutNow      byte = 5
	kindInstallSnapshot byte = 6 // on a connection of its own; the data follows the frame
	kindRPC             byte = 7 // node-to-node request for the layer above (Host.Call)
	kindPeerHello       byte = 8 // body: the sender's listen address; opens a peer connection
	kindRetire          byte = 9 // the sender writes nothing more on this connection (see peer)

	respFlag byte = 0x80
	// lazyFlag marks a request that, like its answer, may linger briefly to
	// share a write with others (see frameWriter).
	lazyFlag byte = 0x40

	statusOK      byte = 0
	statusErr     byte = 1
	statusRefused byte = 2

	headerLen = 4 + 1 + 8 + 8 + 8
	// maxFrame bounds one frame; a peer announcing more is dropped.
	maxFrame = 256 << 20
	// minLogLen is the fewest bytes one encoded raft.Log takes, used to
	// bound the entry count a frame may claim before anything is allocated.
	minLogLen = 7
)

var errShortFrame = errors.New("raftgroup: malformed frame")

type frameHeader struct {
	kind  byte
	group uint64
	id    uint64
	to    uint64 // requests: the addressee's incarnation
}

// appendHeader starts a frame; finishFrame fills in its length.
func appendHeader(b []byte, h frameHeader) []byte {
	b = append(b, 0, 0, 0, 0, h.kind)
	b = binary.BigEndian.AppendUint64(b, h.group)
	b = binary.BigEndian.AppendUint64(b, h.id)
	return binary.BigEndian.AppendUint64(b, h.to)
}

func finishFrame(b []byte, start int) {
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
}

// parseHeader reads the fixed part after the length prefix.
func parseHeader(b []byte) (frameHeader, []byte, error) {
	if len(b) < headerLen-4 {
		return frameHeader{}, nil, errShortFrame
	}
	return frameHeader{
		kind:  b[0],
		group: binary.BigEndian.Uint64(b[1:]),
		id:    binary.BigEndian.Uint64(b[9:]),
		to:    binary.BigEndian.Uint64(b[17:]),
	}, b[25:], nil
}

// decoder reads body fields (wire.Reader); the first error sticks and
// later reads return zero values, so decode functions check it once at
// the end.
type decoder struct{ wire.Reader }

func (d *decoder) bool() bool { return d.Byte() != 0 }

func (d *decoder) time() time.Time {
	ns := d.Varint()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func (d *decoder) done() error {
	if d.Err == nil && len(d.B) != 0 {
		d.Err = fmt.Errorf("%w: %d trailing bytes", errShortFrame, len(d.B))
	}
	return d.Err
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

func appendRPCHeader(b []byte, h raft.RPCHeader) []byte {
	b = binary.AppendUvarint(b, uint64(h.ProtocolVersion))
	b = appendBytes(b, h.ID)
	return appendBytes(b, h.Addr)
}

func (d *decoder) rpcHeader() raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersion(d.Uvarint()), ID: d.Bytes(), Addr: d.Bytes()}
}

func appendLog(b []byte, l *raft.Log) []byte {
	b = binary.AppendUvarint(b, l.Index)
	b = binary.AppendUvarint(b, l.Term)
	b = append(b, byte(l.Type))
	b = appendBytes(b, l.Data)
	b = appendBytes(b, l.Extensions)
	return appendTime(b, l.AppendedAt)
}

func (d *decoder) log(l *raft.Log) {
	l.Index = d.Uvarint()
	l.Term = d.Uvarint()
	l.Type = raft.LogType(d.Byte())
	l.Data = d.Bytes()
	l.Extensions = d.Bytes()
	l.AppendedAt = d.time()
}

func appendAppendEntriesRequest(b []byte, r *raft.AppendEntriesRequest) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	//lint:ignore SA1019 deprecated field still read by raft
	b = appendBytes(b, r.Leader)
	b = binary.AppendUvarint(b, r.PrevLogEntry)
	b = binary.AppendUvarint(b, r.PrevLogTerm)
	b = binary.AppendUvarint(b, r.LeaderCommitIndex)
	b = binary.AppendUvarint(b, uint64(len(r.Entries)))
	for _, l := range r.Entries {
		b = appendLog(b, l)
	}
	return b
}

func decodeAppendEntriesRequest(body []byte, r *raft.AppendEntriesRequest) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	//lint:ignore SA1019 deprecated field still read by raft
	r.Leader = d.Bytes()
	r.PrevLogEntry = d.Uvarint()
	r.PrevLogTerm = d.Uvarint()
	r.LeaderCommitIndex = d.Uvarint()
	n := d.Uvarint()
	if d.Err == nil && n > uint64(len(d.B)/minLogLen) {
		return errShortFrame // claims more entries than the bytes could hold
	}
	if n > 0 && d.Err == nil {
		// One allocation for all entries, bounded by the frame's size.
		logs := make([]raft.Log, n)
		r.Entries = make([]*raft.Log, n)
		for i := range logs {
			d.log(&logs[i])
			r.Entries[i] = &logs[i]
		}
	}
	return d.done()
}

func appendAppendEntriesResponse(b []byte, r *raft.AppendEntriesResponse) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	b = binary.AppendUvarint(b, r.LastLog)
	b = appendBool(b, r.Success)
	return appendBool(b, r.NoRetryBackoff)
}

func decodeAppendEntriesResponse(body []byte, r *raft.AppendEntriesResponse) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	r.LastLog = d.Uvarint()
	r.Success = d.bool()
	r.NoRetryBackoff = d.bool()
	return d.done()
}

func appendRequestVoteRequest(b []byte, r *raft.RequestVoteRequest) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	//lint:ignore SA1019 deprecated field still read by raft
	b = appendBytes(b, r.Candidate)
	b = binary.AppendUvarint(b, r.LastLogIndex)
	b = binary.AppendUvarint(b, r.LastLogTerm)
	return appendBool(b, r.LeadershipTransfer)
}

func decodeRequestVoteRequest(body []byte, r *raft.RequestVoteRequest) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	//lint:ignore SA1019 deprecated field still read by raft
	r.Candidate = d.Bytes()
	r.LastLogIndex = d.Uvarint()
	r.LastLogTerm = d.Uvarint()
	r.LeadershipTransfer = d.bool()
	return d.done()
}

func appendRequestVoteResponse(b []byte, r *raft.RequestVoteResponse) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	b = appendBytes(b, r.Peers)
	return appendBool(b, r.Granted)
}

func decodeRequestVoteResponse(body []byte, r *raft.RequestVoteResponse) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	r.Peers = d.Bytes()
	r.Granted = d.bool()
	return d.done()
}

func appendRequestPreVoteRequest(b []byte, r *raft.RequestPreVoteRequest) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	b = binary.AppendUvarint(b, r.LastLogIndex)
	return binary.AppendUvarint(b, r.LastLogTerm)
}

func decodeRequestPreVoteRequest(body []byte, r *raft.RequestPreVoteRequest) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	r.LastLogIndex = d.Uvarint()
	r.LastLogTerm = d.Uvarint()
	return d.done()
}

func appendRequestPreVoteResponse(b []byte, r *raft.RequestPreVoteResponse) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	return appendBool(b, r.Granted)
}

func decodeRequestPreVoteResponse(body []byte, r *raft.RequestPreVoteResponse) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	r.Granted = d.bool()
	return d.done()
}

// A TimeoutNow carries the sender's term after the header (raft's request
// has none): the receiver drops one from another term (see intercept).
func appendTimeoutNow(b []byte, h raft.RPCHeader, term uint64) []byte {
	b = appendRPCHeader(b, h)
	return binary.AppendUvarint(b, term)
}

// timeoutNowTerm is the term a TimeoutNow request body carries (0 if
// malformed: decodeRequest refuses those).
func timeoutNowTerm(body []byte) uint64 {
	var h raft.RPCHeader
	var term uint64
	if decodeTimeoutNow(body, &h, &term) != nil {
		return 0
	}
	return term
}

func decodeTimeoutNow(body []byte, h *raft.RPCHeader, term *uint64) error {
	d := decoder{wire.Reader{B: body}}
	*h = d.rpcHeader()
	*term = d.Uvarint()
	return d.done()
}

func appendInstallSnapshotRequest(b []byte, r *raft.InstallSnapshotRequest) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, uint64(r.SnapshotVersion))
	b = binary.AppendUvarint(b, r.Term)
	b = appendBytes(b, r.Leader)
	b = binary.AppendUvarint(b, r.LastLogIndex)
	b = binary.AppendUvarint(b, r.LastLogTerm)
	b = appendBytes(b, r.Peers)
	b = appendBytes(b, r.Configuration)
	b = binary.AppendUvarint(b, r.ConfigurationIndex)
	return binary.AppendVarint(b, r.Size)
}

func decodeInstallSnapshotRequest(body []byte, r *raft.InstallSnapshotRequest) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.SnapshotVersion = raft.SnapshotVersion(d.Uvarint())
	r.Term = d.Uvarint()
	r.Leader = d.Bytes()
	r.LastLogIndex = d.Uvarint()
	r.LastLogTerm = d.Uvarint()
	r.Peers = d.Bytes()
	r.Configuration = d.Bytes()
	r.ConfigurationIndex = d.Uvarint()
	r.Size = d.Varint()
	if d.Err == nil && r.Size < 0 {
		return errShortFrame
	}
	return d.done()
}

func appendInstallSnapshotResponse(b []byte, r *raft.InstallSnapshotResponse) []byte {
	b = appendRPCHeader(b, r.RPCHeader)
	b = binary.AppendUvarint(b, r.Term)
	return appendBool(b, r.Success)
}

func decodeInstallSnapshotResponse(body []byte, r *raft.InstallSnapshotResponse) error {
	d := decoder{wire.Reader{B: body}}
	r.RPCHeader = d.rpcHeader()
	r.Term = d.Uvarint()
	r.Success = d.bool()
	return d.done()
}

// decodeRequest turns a request frame's body into the raft command it
// carries. It is the one entry point for untrusted request bytes.
func decodeRequest(kind byte, body []byte) (interface{}, error) {
	switch kind {
	case kindAppendEntries:
		r := new(raft.AppendEntriesRequest)
		return r, decodeAppendEntriesRequest(body, r)
	case kindRequestVote:
		r := new(raft.RequestVoteRequest)
		return r, decodeRequestVoteRequest(body, r)
	case kindRequestPreVote:
		r := new(raft.RequestPreVoteRequest)
		return r, decodeRequestPreVoteRequest(body, r)
	case kindTimeoutNow:
		r := new(raft.TimeoutNowRequest)
		var term uint64
		return r, decodeTimeoutNow(body, &r.RPCHeader, &term)
	case kindInstallSnapshot:
		r := new(raft.InstallSnapshotRequest)
		return r, decodeInstallSnapshotRequest(body, r)
	}
	return nil, fmt.Errorf("raftgroup: unknown request kind %d", kind)
}

// appendResponse encodes raft's answer to a request, after the status byte.
func appendResponse(b []byte, resp interface{}) ([]byte, error) {
	switch r := resp.(type) {
	case *raft.AppendEntriesResponse:
		return appendAppendEntriesResponse(b, r), nil
	case *raft.RequestVoteResponse:
		return appendRequestVoteResponse(b, r), nil
	case *raft.RequestPreVoteResponse:
		return appendRequestPreVoteResponse(b, r), nil
	case *raft.TimeoutNowResponse:
		return appendRPCHeader(b, r.RPCHeader), nil
	case *raft.InstallSnapshotResponse:
		return appendInstallSnapshotResponse(b, r), nil
	}
	return b, fmt.Errorf("raftgroup: cannot encode response %T", resp)
}

// decodeResponse fills resp (a pointer to the raft response type the
// request expects) from a response frame's body.
func decodeResponse(body []byte, resp interface{}) error {
	if len(body) == 0 {
		return errShortFrame
	}
	switch body[0] {
	case statusErr:
		return &remoteError{msg: string(body[1:])}
	case statusRefused:
		return refused(body[1:])
	}
	if body[0] != statusOK {
		return errShortFrame
	}
	body = body[1:]
	switch r := resp.(type) {
	case *raft.AppendEntriesResponse:
		return decodeAppendEntriesResponse(body, r)
	case *raft.RequestVoteResponse:
		return decodeRequestVoteResponse(body, r)
	case *raft.RequestPreVoteResponse:
		return decodeRequestPreVoteResponse(body, r)
	case *raft.TimeoutNowResponse:
		d := decoder{wire.Reader{B: body}}
		r.RPCHeader = d.rpcHeader()
		return d.done()
	case *raft.InstallSnapshotResponse:
		return decodeInstallSnapshotResponse(body, r)
	}
	return fmt.Errorf("raftgroup: cannot decode into %T", resp)
}

// remoteError is an error the remote side returned for a request.
type remoteError struct{ msg string }

func (e *remoteError) Error() string { return "raftgroup: remote: " + oneLine(e.msg) }

// errRefused: the host at the address runs another incarnation than the
// one the request was for. It wraps errUnreachable: the request was not
// served, and to raft the server it meant is as good as down.
var errRefused = fmt.Errorf("%w: addressed to another incarnation", errUnreachable)

func refused(msg []byte) error { return fmt.Errorf("%w (%s)", errRefused, msg) }

// incarnationOf is the incarnation in a server id made by ServerID, or 0
// (which no host has) for any other id.
func incarnationOf(id raft.ServerID) uint64 {
	_, inc, err := ParseServerID(id)
	if err != nil {
		return 0
	}
	return inc
}
