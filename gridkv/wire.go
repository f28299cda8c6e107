package gridkv

import (
	"encoding/binary"
	"errors"
	"fmt"
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
	stRedirect    byte = 2 // body: the leader's RPC address ("" when unknown)
	stMemoryLimit byte = 3
	stInvalid     byte = 4
	stUnavailable byte = 5
	stUnknown     byte = 6 // the write's outcome is unknown
	stClosed      byte = 7
)

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
		return fmt.Errorf("%w: redirected to %q", ErrUnavailable, ans[1:])
	}
	return statusError(ans[0], ans[1:])
}

// statusError maps an answer's status to the API's errors.
func statusError(st byte, body []byte) error {
	switch st {
	case stNotFound:
		return ErrNotFound
	case stMemoryLimit:
		return ErrMemoryLimit
	case stInvalid:
		return errors.Join(ErrInvalid, errors.New(string(body)))
	case stUnavailable:
		return errors.Join(ErrUnavailable, errors.New(string(body)))
	case stUnknown:
		return errors.Join(ErrTimeout, errors.New(string(body)))
	case stClosed:
		return ErrClosed
	}
	return errBadMessage
}
