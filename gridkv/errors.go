package gridkv

import "errors"

// Every error a DB method returns matches one of these with errors.Is.
// Only ErrTimeout (and a write cut off with the node it was sent to, also
// reported as ErrTimeout) leaves a write's outcome unknown; every other
// error means the write was not applied.
var (
	ErrNotFound    = errors.New("gridkv: not found")
	ErrTimeout     = errors.New("gridkv: timed out (a write's outcome is unknown)")
	ErrClosed      = errors.New("gridkv: closed")
	ErrInvalid     = errors.New("gridkv: invalid argument")
	ErrMemoryLimit = errors.New("gridkv: memory limit exceeded")
	ErrUnavailable = errors.New("gridkv: range unavailable")
)
