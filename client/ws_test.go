package client_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/proxy"
)

var wsKey = []byte("ws-test-secret-0123456789abcdef-0123456789")

func hs256(t testing.TB, sub string) string { return hs256Exp(t, sub, time.Now().Add(10*time.Minute)) }

// hs256Exp mints a token for sub that expires at exp.
func hs256Exp(t testing.TB, sub string, exp time.Time) string {
	t.Helper()
	b64 := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "JWT"})
	c, _ := json.Marshal(map[string]any{"sub": sub, "exp": exp.Unix()})
	signed := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	m := hmac.New(sha256.New, wsKey)
	m.Write([]byte(signed))
	return signed + "." + b64.EncodeToString(m.Sum(nil))
}

// killListener can cut every connection it accepted, hijacked WebSockets
// included.
type killListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *killListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *killListener) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

type wsEnv struct {
	db   string
	url  string
	kill func()
}

func newWSEnv(t *testing.T, schema string) *wsEnv {
	t.Helper()
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, schema)
	up := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db, Secret: "s3cret", LongPollTimeout: 2 * time.Second})
	p, err := proxy.New(proxy.Config{Upstream: up.URL, Secret: "s3cret",
		Auth:   proxy.AuthConfig{Algorithms: []string{"HS256"}, HMACKeys: []proxy.HMACKey{{Secret: wsKey}}},
		Shapes: []proxy.ShapeRule{{Name: "items", Table: "items"}},
		Limits: proxy.Limits{RequestsPerSecond: -1, MaxLivePerUser: -1}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(p)
	kl := &killListener{Listener: srv.Listener}
	srv.Listener = kl
	srv.Start()
	t.Cleanup(func() { kl.kill(); srv.Close() })
	return &wsEnv{db: db, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws", kill: kl.kill}
}

// TestWSReconnectNoLoss cuts the connection in the middle of batches: the
// stream resumes and every row arrives exactly once.
func TestWSReconnectNoLoss(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, `CREATE TABLE items (id int PRIMARY KEY, title text);
		INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 500) g`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.url, &client.WSOptions{TokenSource: client.StaticToken(hs256(t, "alice"))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := conn.Stream(ctx, "items", client.WSStreamOptions{Live: true})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	changes := 0
	read := func(until func() bool) {
		t.Helper()
		for !until() {
			m, err := s.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if m.IsMustRefetch() {
				t.Fatal("unexpected must-refetch")
			}
			if m.IsChange() {
				seen[m.Key]++
				changes++
			}
		}
	}
	read(func() bool { return changes >= 100 })
	e.kill()
	read(func() bool { return s.IsUpToDate() })
	pgtest.Exec(t, e.db, `INSERT INTO items SELECT g, 'late ' || g FROM generate_series(501, 520) g`)
	read(func() bool { return len(seen) >= 505 })
	e.kill()
	read(func() bool { return len(seen) >= 520 })
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", k, n)
		}
	}
	if len(seen) != 520 {
		t.Errorf("%d rows", len(seen))
	}
}

// swapTokens is a token source whose current token a test can replace (by
// an expired one, say); Refresh mints a fresh one when asked to replace the
// current one, as client.SharedTokenSource does.
type swapTokens struct {
	t         testing.TB
	mu        sync.Mutex
	current   string
	refreshes int
}

func (s *swapTokens) Token(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, nil
}

func (s *swapTokens) Refresh(_ context.Context, rejected string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rejected == s.current {
		s.current = hs256(s.t, "alice")
		s.refreshes++
	}
	return s.current, nil
}

func (s *swapTokens) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current = hs256Exp(s.t, "alice", time.Now().Add(-time.Hour))
}

// TestWSRefusedTokenRefreshed: a connection whose token the proxy refuses,
// when dialled or redialled (the source's token expired meanwhile), asks
// the source to refresh that token and goes on; before, a redial refreshed
// the token of the previous connection instead, got the expired one back,
// and the stream ended with "401: token refused" (found by the soak).
func TestWSRefusedTokenRefreshed(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, `CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1, 'one')`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tokens := &swapTokens{t: t}
	tokens.expire()
	conn, err := client.DialWS(ctx, e.url, &client.WSOptions{TokenSource: tokens})
	if err != nil {
		t.Fatalf("DialWS with an expired token and a source that refreshes: %v", err)
	}
	defer conn.Close()
	s, err := conn.Stream(ctx, "items", client.WSStreamOptions{Live: true})
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	read := func(n int) {
		t.Helper()
		for len(rows) < n {
			m, err := s.Next(ctx)
			if err != nil {
				t.Fatalf("after %d rows: %v", len(rows), err)
			}
			if m.IsChange() {
				rows[m.Key] = true
			}
		}
	}
	read(1)
	for i := range 3 {
		tokens.expire()
		e.kill() // the redial sends the expired token first
		pgtest.Exec(t, e.db, fmt.Sprintf(`INSERT INTO items VALUES (%d, 'more')`, i+2))
		read(i + 2)
	}
	if tokens.refreshes != 4 {
		t.Errorf("%d refreshes, want 4 (one per refused token)", tokens.refreshes)
	}
}

// TestWSResumeFromOffset resumes on a new connection from a stream's
// Offset and Handle.
func TestWSResumeFromOffset(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, `CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1,'a'),(2,'b')`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.url, &client.WSOptions{TokenSource: client.StaticToken(hs256(t, "alice"))})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := conn.Stream(ctx, "items", client.WSStreamOptions{Parse: true})
	n := 0
	for m, err := range s.Messages(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			n++
			if _, ok := m.Value["id"].(int64); !ok {
				t.Errorf("Parse: id is %T", m.Value["id"])
			}
		}
	}
	if _, err := s.Next(ctx); err != io.EOF || n != 2 {
		t.Fatalf("non-live: %d rows, then %v", n, err)
	}
	offset, handle := s.Offset(), s.Handle()
	conn.Close()
	if _, err := s.Next(ctx); err != client.ErrClosed {
		t.Errorf("after Close: %v", err)
	}

	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (3,'c')`)
	conn, err = client.DialWS(ctx, e.url, &client.WSOptions{TokenSource: client.StaticToken(hs256(t, "alice"))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ = conn.Stream(ctx, "items", client.WSStreamOptions{Offset: offset, Handle: handle, Live: true})
	for {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			if m.Key != `"public"."items"/"3"` {
				t.Fatalf("resumed stream delivered %s again", m.Key)
			}
			break
		}
	}
	var we *client.WSError
	if _, err := client.DialWS(ctx, e.url, &client.WSOptions{TokenSource: client.StaticToken("not-a-token")}); !errors.As(err, &we) || we.Status != 401 {
		t.Errorf("a bad token: %v", err)
	}
}

// A TypedShape follows a WSStream as it follows a ShapeStream, and a
// TransformContext cut short by the caller's context leaves its message
// to the next Next.
func TestWSTypedShape(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, `CREATE TABLE items (id int PRIMARY KEY, title text);
		INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 3) g`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.url, &client.WSOptions{TokenSource: client.StaticToken(hs256(t, "alice"))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var stream client.Stream
	stream, err = conn.Stream(ctx, "items", client.WSStreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		ID    int32  `shape:"id"`
		Title string `shape:"title"`
	}
	s, err := client.NewTypedShape[row](stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range s.All() {
		got = append(got, fmt.Sprint(r.ID, " ", r.Title))
	}
	if strings.Join(got, ",") != "1 row 1,2 row 2,3 row 3" {
		t.Errorf("rows %v", got)
	}

	blocked := false
	ws, err := conn.Stream(ctx, "items", client.WSStreamOptions{TransformContext: func(ctx context.Context, m *client.Message) error {
		if m.Key != "" && !blocked {
			blocked = true
			<-ctx.Done()
			return ctx.Err()
		}
		m.Value["title"] = "seen"
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	short, stop := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = ws.Next(short)
	stop()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next = %v", err)
	}
	n := 0
	for m, err := range ws.Messages(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			n++
			if m.Value["title"] != "seen" {
				t.Errorf("%s not transformed", m.Key)
			}
		}
	}
	if n != 3 {
		t.Errorf("%d changes, want 3", n)
	}
}
