package gridkv

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Node-to-node messages, carried by raftgroup.Host.Call on the Raft
// listener. A request is: kind byte, uvarint range, then the kind's body.
// An answer is: status byte, then the status's body.
const (
	reqWrite   byte = 1 // body: an encoded single-operation fsmpb.Command
	reqRead    byte = 2 // body: mode byte, key
	reqPrepare byte = 3 // create an empty replica of the range here
	reqStatus  byte = 4 // the range's voter count (asked of its leader)
	reqDrop    byte = 5 // body: the Raft server id removed; drop the replica if it is ours
	reqLeave   byte = 6 // body: the Raft server id of a closing node's replica; its leader removes it
)

const (
	stOK          byte = 0 // write: uvarint version, swapped byte; read: uvarint version, value; status: uvarint voters; leave: removed
	stNotFound    byte = 1
	stRedirect    byte = 2 // body: the leader's server id and RPC address (see appendRedirect)
	stMemoryLimit byte = 3
	stInvalid     byte = 4
	stUnavailable byte = 5
	stUnknown     byte = 6 // the write's outcome is unknown
	stClosed      byte = 7
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

var errBadMessage = errors.New("gridkv: malformed node-to-node message")

func encodeRequest(kind byte, rangeID int, body []byte) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(body))
	b = append(b, kind)
	b = binary.AppendUvarint(b, uint64(rangeID))
	return append(b, body...)
}

func decodeRequest(b []byte) (kind byte, rangeID int, body []byte, err error) {
	if len(b) < 2 {
		return 0, 0, nil, errBadMessage
	}
	r, n := binary.Uvarint(b[1:])
	if n <= 0 || r > 1<<20 {
		return 0, 0, nil, errBadMessage
	}
	return b[0], int(r), b[1+n:], nil
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
	}
	return errBadMessage
}

// readReq is one read: of range r, in mode, of key.
type readReq struct {
	r    int
	mode readMode
	key  string
}
