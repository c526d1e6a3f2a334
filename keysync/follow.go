package keysync

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/client"
)

// FollowOptions configure [Follow]: which shape, through which proxy, as
// which device, trusting which roots.
type FollowOptions struct {
	// ProxyURL is the proxy's base URL: shapes are at
	// ProxyURL/v1/shapes/{name}.
	ProxyURL string
	// Shape is the name of the data shape's rule (ProxyURL/v1/shapes/Shape),
	// or ShapeURL its full URL.
	Shape    string
	ShapeURL string
	// KeysURL is the key shape (default ProxyURL/v1/shapes/keys) and LogURL
	// the log shape (default KeysURL with its last segment, "keys",
	// replaced by "log"): the rules `shapeseal dev` and the proxy's
	// examples define.
	KeysURL, LogURL string

	// Tokens authenticate the device to the proxy for all three shapes; a
	// client.RefreshableTokenSource is refreshed after a 401. Required.
	Tokens client.TokenSource

	// IdentityFile is the device's age identity file; or Identity the
	// identity itself. One is required.
	IdentityFile string
	Identity     age.Identity

	// Roots are the pinned root keys (see [KeyringOptions].Roots): from
	// configuration, never from the database. At least one is required.
	Roots []VerifyKey

	// Floor keeps how far each tenant's log was seen across runs. Nil
	// opens the file [DefaultFloorPath](IdentityFile), next to the
	// identity; with Identity instead of IdentityFile, Floor is required.
	Floor Floor

	// Tables say which columns are encrypted, and how: the specs the
	// writers use. At least one is required.
	Tables []TableSpec

	// Stream, if set, is the starting point of the data stream's options
	// (Params, Header, Backoff, Offset and Handle to resume, ...). Its
	// URL, TokenSource, Live and transforms are set by Follow.
	Stream client.Options

	// HTTPClient makes every request (nil: http.DefaultClient); Logger
	// receives the streams' and the keyring's logs (nil: none).
	HTTPClient *http.Client
	Logger     *slog.Logger

	// KeyWait bounds the wait for a key a cell names (see
	// [KeyringOptions].KeyWait).
	KeyWait time.Duration
	// OnKeyRowError is [KeyringOptions].OnRowError.
	OnKeyRowError func(*KeyRowError)

	// OnRowError is client.TypedOptions.OnRowError: what to do with a row
	// that does not decode into T. Nil leaves out rows with cells that do
	// not open (the error wraps a *CellError: a field of type [Plaintext]
	// takes such a cell instead of failing), logging them, and stops on
	// any other error (a column that does not fit its field).
	OnRowError func(key string, err error) error
}

// Followed is a decrypting typed shape, as [Follow] starts it: its rows
// (as a client.TypedShape reads them: View, Get, All, Wait, Changes, ...)
// and the keyring that opens their cells, running until ctx ends or Close.
type Followed[T any] struct {
	shape  *client.TypedShape[T]
	ring   *Keyring
	stream *client.ShapeStream
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	err    error // the first part's failure, once done is closed
}

// Follow follows a shape through the proxy as one device and returns its
// rows decrypted and decoded into T (a struct; see client.RowDecoder for
// the tags and conversions, and [Plaintext] for encrypted columns). It
// wires what examples/service used to wire by hand: a [Keyring] following
// the key and log shapes, verified from the pinned roots, with a floor; a
// [Decrypter] for the tables as the data stream's TransformBatch, so
// that a cell waits for its key on the stream's context; and a
// client.TypedShape over the stream.
//
// Follow returns at once; the shapes are followed in the background until
// ctx ends or Close is called, and the first part to fail stops the
// others (see Err). Wait for the first view with Wait.
func Follow[T any](ctx context.Context, o FollowOptions) (*Followed[T], error) {
	if o.ProxyURL == "" && (o.ShapeURL == "" || o.KeysURL == "") {
		return nil, errors.New("keysync: Follow needs FollowOptions.ProxyURL (or ShapeURL and KeysURL)")
	}
	if o.Tokens == nil {
		return nil, errors.New("keysync: Follow needs FollowOptions.Tokens")
	}
	if len(o.Tables) == 0 {
		return nil, errors.New("keysync: Follow needs the encrypted tables' specs (FollowOptions.Tables)")
	}
	shapeURL, keysURL, logURL, err := o.urls()
	if err != nil {
		return nil, err
	}
	identity, floor, err := o.device()
	if err != nil {
		return nil, err
	}
	shared := client.Options{TokenSource: o.Tokens, HTTPClient: o.HTTPClient, Logger: o.Logger}
	keys, logs := shared, shared
	keys.URL, logs.URL = keysURL, logURL
	ring, err := NewKeyring(KeyringOptions{
		Stream: keys, Log: logs, Identity: identity, Roots: o.Roots, Floor: floor,
		KeyWait: o.KeyWait, OnRowError: o.OnKeyRowError, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	dec, err := NewDecrypter(ring, o.Tables...)
	if err != nil {
		return nil, err
	}
	so := o.Stream
	so.URL, so.TokenSource, so.Live = shapeURL, o.Tokens, true
	so.Transform, so.TransformContext, so.TransformBatch = nil, nil, dec.TransformBatch
	so.HTTPClient = cmp.Or(so.HTTPClient, o.HTTPClient)
	so.Logger = cmp.Or(so.Logger, o.Logger)
	stream, err := client.New(so)
	if err != nil {
		return nil, err
	}
	onRow := o.OnRowError
	if onRow == nil {
		onRow = leaveOutUnopened(cmp.Or(o.Logger, slog.New(slog.DiscardHandler)))
	}
	shape, err := client.NewTypedShape[T](WithDecrypter(stream, dec), client.TypedOptions{OnRowError: onRow})
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	f := &Followed[T]{shape: shape, ring: ring, stream: stream, cancel: cancel, done: make(chan struct{})}
	f.start(ctx, shapeURL)
	return f, nil
}

// urls returns the data, key and log shapes' URLs that o names.
func (o *FollowOptions) urls() (shapeURL, keysURL, logURL string, err error) {
	base := strings.TrimSuffix(o.ProxyURL, "/")
	shapeURL = o.ShapeURL
	if shapeURL == "" {
		if o.Shape == "" {
			return "", "", "", errors.New("keysync: Follow needs FollowOptions.Shape or ShapeURL")
		}
		shapeURL = base + "/v1/shapes/" + url.PathEscape(o.Shape)
	}
	keysURL = cmp.Or(o.KeysURL, base+"/v1/shapes/keys")
	logURL = o.LogURL
	if logURL == "" {
		if logURL, err = LogURLFor(keysURL); err != nil {
			return "", "", "", err
		}
	}
	return shapeURL, keysURL, logURL, nil
}

// device returns the device's identity and floor: o's, or loaded from
// (next to) o.IdentityFile.
func (o *FollowOptions) device() (age.Identity, Floor, error) {
	identity := o.Identity
	if identity == nil {
		if o.IdentityFile == "" {
			return nil, nil, errors.New("keysync: Follow needs FollowOptions.IdentityFile or Identity")
		}
		var err error
		if identity, err = LoadIdentityFile(o.IdentityFile); err != nil {
			return nil, nil, err
		}
	}
	floor := o.Floor
	if floor == nil {
		if o.IdentityFile == "" {
			return nil, nil, errors.New("keysync: Follow needs FollowOptions.Floor when the identity is not a file")
		}
		var err error
		if floor, err = OpenFileFloor(DefaultFloorPath(o.IdentityFile)); err != nil {
			return nil, nil, err
		}
	}
	return identity, floor, nil
}

// leaveOutUnopened is the default FollowOptions.OnRowError: it leaves out
// a row with a cell that did not open, logging it, and stops on any other
// error.
func leaveOutUnopened(log *slog.Logger) func(key string, err error) error {
	return func(key string, err error) error {
		if _, ok := errors.AsType[*CellError](err); ok {
			log.Warn("keysync: row left out: a cell did not open", "key", key, "err", err)
			return nil
		}
		return err
	}
}

// start follows the key and log shapes and the data shape (at shapeURL)
// in the background on ctx, which f.cancel ends: the first part to fail
// ends the others, and f.done is closed once all have stopped.
func (f *Followed[T]) start(ctx context.Context, shapeURL string) {
	var wg sync.WaitGroup
	var errMu sync.Mutex
	fail := func(part string, err error) {
		if err != nil && ctx.Err() == nil {
			errMu.Lock()
			if f.err == nil {
				f.err = fmt.Errorf("keysync: following %s: %w", part, err)
			}
			errMu.Unlock()
		}
		f.cancel()
	}
	wg.Go(func() { fail("the key and log shapes", f.ring.Run(ctx)) })
	wg.Go(func() {
		// Waiting for the keyring first spares the first rows a wait for
		// their keys; the decrypter would wait for them anyway. If it
		// fails, ctx ended or the keyring stopped (its part says why, and
		// ends ctx): Run then returns at once, and ends Changes.
		if f.ring.Ready(ctx) != nil {
			f.cancel()
		}
		fail(shapeURL, f.shape.Run(ctx))
	})
	go func() {
		wg.Wait()
		f.stream.Close() // no Next runs any more
		close(f.done)
	}()
}

// View returns the current view: the rows as of the last up-to-date.
func (f *Followed[T]) View() *client.View[T] { return f.shape.View() }

// Get returns the row with the given key in the current view.
func (f *Followed[T]) Get(key string) (T, bool) { return f.shape.Get(key) }

// Len returns the number of rows in the current view.
func (f *Followed[T]) Len() int { return f.shape.Len() }

// All iterates over the rows of the current view in key order.
func (f *Followed[T]) All() iter.Seq2[string, T] { return f.shape.All() }

// IsUpToDate reports whether the view is current.
func (f *Followed[T]) IsUpToDate() bool { return f.shape.IsUpToDate() }

// Changes returns the batches applied from now on (see
// client.TypedShape.Changes); it ends when following stops.
func (f *Followed[T]) Changes(ctx context.Context) iter.Seq[*client.Batch[T]] {
	return f.shape.Changes(ctx)
}

// Subscribe calls fn after every batch that changed the view (see
// client.TypedShape.Subscribe).
func (f *Followed[T]) Subscribe(fn func(*client.Batch[T])) (unsubscribe func()) {
	return f.shape.Subscribe(fn)
}

// Shape returns the typed shape, which Follow runs: do not Run or Apply
// it yourself.
func (f *Followed[T]) Shape() *client.TypedShape[T] { return f.shape }

// Keyring returns the keyring that opens the shape's cells.
func (f *Followed[T]) Keyring() *Keyring { return f.ring }

// Stream returns the data shape's stream, whose Offset and Handle say
// where to resume from (FollowOptions.Stream).
func (f *Followed[T]) Stream() *client.ShapeStream { return f.stream }

// Done is closed once following has stopped: ctx ended, Close was called,
// or a part failed (Err says why).
func (f *Followed[T]) Done() <-chan struct{} { return f.done }

// Err returns why following stopped by itself: a stream's error (a refused
// token, say), or a row's (see FollowOptions.OnRowError). It is nil while
// following, and after ctx ended or Close.
func (f *Followed[T]) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

// Wait waits until the shape is up to date and ok (nil accepts any view)
// accepts its view, as client.TypedShape.Wait does; when following stops
// first it returns why (Err), or client.ErrClosed.
func (f *Followed[T]) Wait(ctx context.Context, ok func(*client.View[T]) bool) (*client.View[T], error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-f.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	v, err := f.shape.Wait(wctx, ok)
	if err != nil && ctx.Err() == nil { // following stopped
		<-f.done
		return nil, cmp.Or(f.err, client.ErrClosed)
	}
	return v, err
}

// Close stops following, waits for it and releases the streams and the
// keyring. It returns Err.
func (f *Followed[T]) Close() error {
	f.once.Do(func() {
		f.cancel()
		<-f.done
		f.ring.Close()
	})
	return f.err
}

// LogURLFor returns the log shape's URL next to the key shape's: keysURL
// with its last path segment, "keys", replaced by "log", as the proxy's
// rules are usually named.
func LogURLFor(keysURL string) (string, error) {
	u, err := url.Parse(keysURL)
	if err != nil {
		return "", err
	}
	dir, last := path.Split(u.Path)
	if last != "keys" {
		return "", fmt.Errorf("keysync: the key shape %s does not end in /keys: give the log shape's URL", keysURL)
	}
	u.Path, u.RawPath = dir+"log", ""
	return u.String(), nil
}

// Plaintext is the field type of an encrypted column in a typed row (see
// [Follow] and client.RowDecoder): the cell's plaintext, or why it did
// not open. A string field takes the plaintext too, but a cell that does
// not open makes the whole row fail to decode; a Plaintext field keeps
// the row and says which cell.
type Plaintext struct {
	Text  string     // the plaintext; "" for NULL and for a cell that did not open
	Valid bool       // the cell opened (false for NULL)
	Err   *CellError // why the cell did not open; nil if it did, or is NULL
}

// Scan implements sql.Scanner, which client.RowDecoder uses: a string is
// the plaintext, a *CellError a cell that did not open, nil NULL.
func (p *Plaintext) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*p = Plaintext{}
	case string:
		*p = Plaintext{Text: v, Valid: true}
	case []byte:
		*p = Plaintext{Text: string(v), Valid: true}
	case *CellError:
		*p = Plaintext{Err: v}
	default:
		return fmt.Errorf("keysync: %T is not a decrypted cell", v)
	}
	return nil
}

// String returns the plaintext, or the error's code in angle brackets
// (<no_key>), or "" for NULL.
func (p Plaintext) String() string {
	if p.Err != nil {
		return "<" + p.Err.Code() + ">"
	}
	return p.Text
}

// MarshalJSON encodes the plaintext as a JSON string, NULL as null, and a
// cell that did not open as its *CellError does ({"error", "message"}).
func (p Plaintext) MarshalJSON() ([]byte, error) {
	switch {
	case p.Err != nil:
		return p.Err.MarshalJSON()
	case !p.Valid:
		return []byte("null"), nil
	}
	return json.Marshal(p.Text)
}
