package gridkv

import (
	"errors"
	"fmt"
	"strings"
)

// Every error a DB method (and Open) returns matches one of these with
// errors.Is, wrapped with detail on one line. Only ErrTimeout (and a write
// cut off with the node it was sent to, also reported as ErrTimeout) leaves
// a write's outcome unknown, and then its text says "outcome unknown";
// every other error means the write was not applied.
var (
	ErrNotFound    = errors.New("gridkv: not found")
	ErrTimeout     = errors.New("gridkv: timed out")
	ErrClosed      = errors.New("gridkv: closed")
	ErrInvalid     = errors.New("gridkv: invalid argument")
	ErrMemoryLimit = errors.New("gridkv: memory limit exceeded")
	ErrUnavailable = errors.New("gridkv: unavailable")
	// ErrCompacted ends a watch whose history is gone: the changes it
	// needed are no longer kept (see DB.Watch). Reload, then watch again.
	ErrCompacted = errors.New("gridkv: watch history compacted")
	// ErrLagged ends a watch whose receiver fell WatchBuffer events behind.
	ErrLagged = errors.New("gridkv: watcher fell behind")
)

// timedOut wraps cause in ErrTimeout. inFlight marks a write that may have
// been applied: only then does the text say the outcome is unknown.
func timedOut(cause error, inFlight bool) error {
	if inFlight {
		return fmt.Errorf("%w: write outcome unknown: %w", ErrTimeout, cause)
	}
	return fmt.Errorf("%w: %w", ErrTimeout, cause)
}

// oneLine collapses the line breaks of an error text from elsewhere (another
// node, errors.Join) so that every error fits on one line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	var b strings.Builder
	for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		if b.Len() > 0 {
			if strings.ContainsRune(":;,", rune(b.String()[b.Len()-1])) {
				b.WriteByte(' ')
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(l)
	}
	return b.String()
}

// joinErrors is errors.Join on one line: nil if every err is nil.
func joinErrors(errs ...error) error {
	var texts []string
	var first error
	for _, err := range errs {
		if err != nil {
			texts = append(texts, err.Error())
			if first == nil {
				first = err
			}
		}
	}
	switch len(texts) {
	case 0:
		return nil
	case 1:
		return first
	}
	return fmt.Errorf("%w (and: %s)", first, strings.Join(texts[1:], "; "))
}
