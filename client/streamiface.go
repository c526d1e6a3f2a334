package client

import (
	"context"
	"iter"
)

// A Stream follows one shape and delivers its messages one at a time: a
// [*ShapeStream] over HTTP, or a [*WSStream] over a proxy's WebSocket. Both
// have the same semantics (see the package documentation), and everything
// that follows a shape ([Shape], [TypedShape]) takes either.
type Stream interface {
	// Next returns the next message; io.EOF once a non-live stream has
	// delivered its up-to-date message; ctx.Err() when ctx ends (the
	// stream can be read again); otherwise an error that ends the stream.
	Next(ctx context.Context) (Message, error)
	// Messages iterates over Next's results, ending at io.EOF or after
	// the first error.
	Messages(ctx context.Context) iter.Seq2[Message, error]
	// Close releases the stream; Next then returns ErrClosed.
	Close() error
	// Offset and Handle are where to resume from after an up-to-date.
	Offset() string
	Handle() string
	// IsUpToDate reports whether an up-to-date message was delivered since
	// the stream started or last had to refetch.
	IsUpToDate() bool
	// Schema returns the shape's schema once known.
	Schema() Schema
}

var (
	_ Stream = (*ShapeStream)(nil)
	_ Stream = (*WSStream)(nil)
)

// changesOnly reports whether s follows a shape with log=changes_only.
func changesOnly(s Stream) bool {
	// A wrapper (keysync.WithDecrypter, say) may say what it wraps.
	for {
		u, ok := s.(interface{ Unwrap() Stream })
		if !ok {
			break
		}
		s = u.Unwrap()
	}
	ss, ok := s.(*ShapeStream)
	return ok && ss != nil && ss.opts.Params.Log == "changes_only"
}

// isNil reports whether s is nil, or a nil pointer of a known stream type.
func isNil(s Stream) bool {
	switch s := s.(type) {
	case nil:
		return true
	case *ShapeStream:
		return s == nil
	case *WSStream:
		return s == nil
	}
	return false
}
