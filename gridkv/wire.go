package gridkv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Node-to-node messages, carried by raftgroup.Host.Call on the Raft
// listener. A request is: kind byte, uvarint group (a wireGroup: with the
// creation asked for above it), then the kind's body.
// An answer is: status byte, then the status's body.
const (
	reqWrite   byte = 1 // body: an encoded single-operation fsmpb.Command
	reqRead    byte = 2 // body: mode byte, key; Quorum: mode byte, q byte, key
	reqPrepare byte = 3 // create an empty replica of the range here
	reqStatus  byte = 4 // the range's voter count (asked of its leader)
	reqDrop    byte = 5 // body: appendDrop; drop the replica if it is ours
	reqLeave   byte = 6 // body: the Raft server id of a closing node's replica; its leader removes it
	// Quorum reads (see quorum.go), asked of any voter of the range.
	reqQuorumState byte = 7  // body: key; answer: the replica's state, then a read answer
	reqQuorumWait  byte = 8  // body: uvarint index, key; a read answer once the replica applied index
	reqReads       byte = 9  // group 0; body: many reads (see appendRead), answered together (see appendReadAnswer)
	reqWrites      byte = 10 // group 0; body: many writes, framed as reqReads frames reads, answered the same way
	// Range handoff (handoff.go): admin requests, apart from the data path.
	reqRangeRecord byte = 11 // body: uvarint range; any replica answers its record of it (appendRecord)
	reqHandoffPrep byte = 12 // body: uvarint range, epoch h, source, count, bytes; the target's leader logs Incoming
	reqExport      byte = 13 // body: uvarint range, epoch h, max bytes, then the cursor key; a source replica answers a Chunk command
	reqActivate    byte = 14 // body: uvarint range, epoch h; the target's leader logs Activate once the source shows Gone(h+1)
	reqMoveRange   byte = 15 // body: uvarint range, target group; the source's leader logs Freeze (MoveRange)
	// The cluster's layout (grow.go).
	reqLayout      byte = 16 // group 0; a replica answers the layout it applied (fsm.AppendLayout)
	reqCreateGroup byte = 17 // group 0; body: uvarint group; bootstrap it here with the server set group 0 logged
	// Scan (scanpage.go).
	reqScan byte = 18 // body: appendScan; answer: stOK then appendScanPage, read in the request's mode
	// reqWatch (19): a group's changes since given positions (watchserve.go).
	// reqMembership: body appendDrop; the group's leader answers whether
	// that server is in its latest committed configuration (orphans.go).
	reqMembership byte = 20
	// reqRecoverGroup: group 0's leader logs a group's new creation, started
	// from one replica after the group lost its majority (recover.go).
	reqRecoverGroup byte = 21 // group 0; body: uvarint group, creation, then server id and address, length-prefixed
)

const (
	// stOK: a write's body is uvarint version, swapped byte[, varint Incr
	// sum] (writeAnswer); a read's is uvarint version, varint expireAt
	// (unix nanoseconds; 0: none), value (entryAnswer), in single, batched
	// (reqReads) and Quorum (reqQuorumState, reqQuorumWait) answers alike;
	// status: the servers (see DB.ready); leave: removed.
	stOK          byte = 0
	stNotFound    byte = 1
	stRedirect    byte = 2 // body: the leader's server id and RPC address (see appendRedirect)
	stMemoryLimit byte = 3
	stInvalid     byte = 4
	stUnavailable byte = 5
	stUnknown     byte = 6 // the write's outcome is unknown
	stClosed      byte = 7
	// stResend, only inside a reqReads answer: the read was not served, its
	// answer would have made the frame too large; send it again.
	stResend byte = 8
	// stWrongGroup: the group's record of the range is Gone: body uvarint
	// range, epoch E, group X (the range is at X since E). Nothing applied.
	stWrongGroup byte = 9
	// stMoving: the range is in a handoff here (a write to a Frozen range,
	// anything for an Incoming or Sealed one): back off and retry. Nothing
	// applied.
	stMoving byte = 10
	// stNotHere: the group has no record that says where the range is
	// (Absent): the router asks every group (findRange). Nothing applied.
	stNotHere byte = 11
)

// peer is a node incarnation to send requests to: raftgroup refuses a
// request addressed to another incarnation than the one at addr.
type peer struct {
	id   raft.ServerID
	addr string
}

func (p peer) known() bool { return p.addr != "" }

// redirect answers with the leader this node knows of (none: zero peer):
// uvarint length of its server id, the id, then its address.
func redirect(p peer) []byte {
	b := binary.AppendUvarint([]byte{stRedirect}, uint64(len(p.id)))
	b = append(b, p.id...)
	return append(b, p.addr...)
}

// decodeRedirect reads a redirect's body; a malformed one names nobody.
func decodeRedirect(body []byte) peer {
	n, k := binary.Uvarint(body)
	if k <= 0 || n > uint64(len(body)-k) {
		return peer{}
	}
	return peer{id: raft.ServerID(body[k : k+int(n)]), addr: string(body[k+int(n):])}
}

// errBadMessage: an answer from another node could not be read. It
// matches ErrUnavailable (route reports an empty answer to a write as an
// unknown outcome instead).
var errBadMessage = fmt.Errorf("%w: malformed node-to-node message", ErrUnavailable)

// A request's group field (the header's, and each item's in reqReads and
// reqWrites) is a wireGroup: the group number, and above it the creation
// of the group the asker means (replica.gen, as its layout knows it; 0 for
// requests about replicas, whose body names the creation). A replica of
// an older creation does not serve it (superseded): a node cut off while
// the group was recovered (DB.RecoverGroup), still holding and maybe
// leading the old creation, serves none of the new creation's askers.
func wireGroup(r int, gen uint64) int { return int(gen<<16 | uint64(r)) }

// maxWireGen bounds the creation a request names (a layout epoch).
const maxWireGen = 1 << 40

func encodeRequest(kind byte, rangeID int, body []byte) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(body))
	b = append(b, kind)
	b = binary.AppendUvarint(b, uint64(rangeID))
	return append(b, body...)
}

// decodeRequest reads a request's header: its kind and group field
// (wireGroup: the group and the creation asked for).
func decodeRequest(b []byte) (kind byte, rangeID int, gen uint64, body []byte, err error) {
	if len(b) < 2 {
		return 0, 0, 0, nil, errBadMessage
	}
	r, gen, n, ok := readWireGroup(b[1:])
	if !ok {
		return 0, 0, 0, nil, errBadMessage
	}
	return b[0], r, gen, b[1+n:], nil
}

// readWireGroup reads a uvarint wireGroup at the start of b.
func readWireGroup(b []byte) (r int, gen uint64, n int, ok bool) {
	v, n := binary.Uvarint(b)
	if n <= 0 || v>>16 > maxWireGen {
		return 0, 0, 0, false
	}
	return int(v & 0xffff), v >> 16, n, true
}

// answerErr is nil for an stOK answer, else the answer's error.
func answerErr(ans []byte) error {
	switch {
	case len(ans) == 0:
		return errBadMessage
	case ans[0] == stOK:
		return nil
	case ans[0] == stRedirect:
		return fmt.Errorf("%w: redirected to %s", ErrUnavailable, decodeRedirect(ans[1:]).addr)
	}
	return statusError(ans[0], ans[1:])
}

// statusError maps an answer's status to the API's errors; the answer's
// text, from another node, is put on one line.
func statusError(st byte, body []byte) error {
	wrap := func(sentinel error) error {
		if len(body) == 0 {
			return sentinel
		}
		return fmt.Errorf("%w: %s", sentinel, oneLine(string(body)))
	}
	switch st {
	case stNotFound:
		return ErrNotFound
	case stMemoryLimit:
		return ErrMemoryLimit
	case stInvalid:
		return wrap(ErrInvalid)
	case stUnavailable:
		return wrap(ErrUnavailable)
	case stUnknown:
		return timedOut(errors.New(oneLine(string(body))), true)
	case stClosed:
		return ErrClosed
	case stMoving:
		return fmt.Errorf("%w: range is moving between replica groups", ErrUnavailable)
	case stWrongGroup, stNotHere:
		return fmt.Errorf("%w: range not found in the replica group asked", ErrUnavailable)
	}
	return errBadMessage
}

// readReq is one read: of range r, in mode, of key.
type readReq struct {
	r    int
	gen  uint64 // the creation of group r asked for (wireGroup)
	mode readMode
	q    int // Quorum(q)
	key  string
}

// parseRead reads a reqRead body: mode byte, then for Quorum the q byte,
// then the key.
func parseRead(r int, body []byte) (readReq, bool) {
	if len(body) == 0 {
		return readReq{}, false
	}
	rd := readReq{r: r, mode: readMode(body[0]), key: string(body[1:])}
	if rd.mode == readQuorum {
		if len(body) < 2 || body[1] == 0 {
			return readReq{}, false
		}
		rd.q, rd.key = int(body[1]), string(body[2:])
	}
	return rd, true
}

// A reqReads request (kind, uvarint range 0, then this body) carries reads
// bound for one node: uvarint count, then per read uvarint range, uvarint
// length, and that many bytes of a reqRead body (mode byte, key). Its
// answer is stOK, uvarint count, then per read, in the request's order,
// uvarint length and that many bytes of the read's answer, the same bytes
// a single reqRead is answered with (status byte, body) or stResend; or a
// single status for every read (stInvalid: the request was malformed).

// encodeReads starts a request of kind (reqReads or reqWrites) for n
// requests of about size bytes.
func encodeReads(kind byte, n, size int) []byte {
	b := make([]byte, 0, 3+binary.MaxVarintLen64+size+n*(2*binary.MaxVarintLen32))
	b = append(b, kind, 0)
	return binary.AppendUvarint(b, uint64(n))
}

// appendRead adds a read of range r to a reqReads request; body is its
// reqRead body.
func appendRead(b []byte, r int, body []byte) []byte {
	b = binary.AppendUvarint(b, uint64(r))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

// decodeReads reads a reqReads request's body (after the group).
func decodeReads(b []byte) ([]readReq, error) {
	var reads []readReq
	err := eachItem(b, func(n int) { reads = make([]readReq, n) }, func(i, r int, gen uint64, body []byte) bool {
		rd, ok := parseRead(r, body)
		rd.gen = gen
		reads[i] = rd
		return ok
	})
	if err != nil {
		return nil, err
	}
	return reads, nil
}

// forwardedWrite is one write of a reqWrites request.
type forwardedWrite struct {
	r   int    // its group
	gen uint64 // the creation of it asked for (wireGroup)
	cmd []byte // an encoded single-operation command (its own copy)
}

// decodeWrites reads a reqWrites request's body (after the group).
func decodeWrites(b []byte) ([]forwardedWrite, error) {
	var writes []forwardedWrite
	err := eachItem(b, func(n int) { writes = make([]forwardedWrite, n) }, func(i, r int, gen uint64, body []byte) bool {
		// A copy: the command may stay in the Raft log, which must not
		// hold the whole frame.
		writes[i] = forwardedWrite{r: r, gen: gen, cmd: bytes.Clone(body)}
		return true
	})
	if err != nil {
		return nil, err
	}
	return writes, nil
}

// eachItem walks the body of a reqReads or reqWrites request (after the
// group): uvarint count, then per item uvarint group, uvarint length and
// that many bytes. It calls start with the count, then item for each, in
// order, with body a slice of b; item returns false to reject the request.
func eachItem(b []byte, start func(n int), item func(i, r int, gen uint64, body []byte) bool) error {
	n, k := binary.Uvarint(b)
	// An item takes at least 3 bytes: no count allocates more than the
	// bytes that came can hold.
	if k <= 0 || n > uint64(len(b)-k)/3 {
		return errBadMessage
	}
	b = b[k:]
	start(int(n))
	for i := range int(n) {
		r, gen, k, ok := readWireGroup(b)
		if !ok {
			return errBadMessage
		}
		b = b[k:]
		l, k := binary.Uvarint(b)
		if k <= 0 || l == 0 || l > uint64(len(b)-k) {
			return errBadMessage
		}
		if !item(i, r, gen, b[k:k+int(l)]) {
			return errBadMessage
		}
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return errBadMessage
	}
	return nil
}

// appendReadAnswer adds one read's answer to a reqReads answer (which
// starts with stOK and the count).
func appendReadAnswer(b, ans []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(ans)))
	return append(b, ans...)
}

// decodeReadAnswers splits a reqReads answer for n reads into the reads'
// answers, which are slices of b. A single status answers every read.
func decodeReadAnswers(b []byte, n int) ([][]byte, error) {
	if len(b) == 0 {
		return nil, errBadMessage
	}
	answers := make([][]byte, n)
	if b[0] != stOK {
		for i := range answers {
			answers[i] = b
		}
		return answers, nil
	}
	count, k := binary.Uvarint(b[1:])
	if k <= 0 || count != uint64(n) {
		return nil, errBadMessage
	}
	b = b[1+k:]
	for i := range answers {
		l, k := binary.Uvarint(b)
		if k <= 0 || l == 0 || l > uint64(len(b)-k) {
			return nil, errBadMessage
		}
		answers[i] = b[k : k+int(l) : k+int(l)]
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, errBadMessage
	}
	return answers, nil
}

// appendDrop appends a reqDrop body: the Raft server id removed from a
// group, then the group's creation (replica.gen) as a uvarint after a 0
// byte (server ids hold none).
func appendDrop(b []byte, id raft.ServerID, gen uint64) []byte {
	b = append(append(b, id...), 0)
	return binary.AppendUvarint(b, gen)
}

// parseDrop reads a reqDrop body; one without the creation names creation 0.
func parseDrop(body []byte) (id raft.ServerID, gen uint64, ok bool) {
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return raft.ServerID(body), 0, true
	}
	gen, n := binary.Uvarint(body[i+1:])
	return raft.ServerID(body[:i]), gen, n > 0 && i+1+n == len(body)
}
