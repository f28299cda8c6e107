package fsm

import (
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// SetOp is a Set command; ttl <= 0 means no expiry.
func SetOp(key string, value []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Set{Set: &fsmpb.Set{
		Key: []byte(key), Value: value, TtlNanos: int64(ttl)}}}
}

// DeleteOp is a Delete command.
func DeleteOp(key string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Delete{Delete: &fsmpb.Delete{Key: []byte(key)}}}
}

// CASOp is a CompareAndSwap command: store new if the current value equals
// old, where old == nil means "only if absent" and []byte{} means "present
// with an empty value".
func CASOp(key string, old, new []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Cas{Cas: &fsmpb.CompareAndSwap{
		Key: []byte(key), OldAbsent: old == nil, Old: old, New: new, TtlNanos: int64(ttl)}}}
}

// BatchOp groups operations into one log entry; each gets its own Result.
func BatchOp(ops ...*fsmpb.Command) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Batch{Batch: &fsmpb.Batch{Ops: ops}}}
}

// Encode marshals a command into a log entry's data.
func Encode(cmd *fsmpb.Command) ([]byte, error) { return proto.Marshal(cmd) }
