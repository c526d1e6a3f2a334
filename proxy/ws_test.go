package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

func (e *env) wsURL() string { return "ws" + strings.TrimPrefix(e.url, "http") + "/v1/ws" }

// syncWS reads s until its first up-to-date and returns the rows.
func syncWS(t *testing.T, ctx context.Context, s *client.WSStream, rows map[string]client.Row) {
	t.Helper()
	for {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		switch {
		case m.IsChange():
			if m.Headers.Operation == client.Delete {
				delete(rows, m.Key)
			} else {
				rows[m.Key] = m.Value
			}
		case m.IsMustRefetch():
			clear(rows)
		case m.IsUpToDate():
			return
		}
	}
}

// waitRow reads s until row key appears.
func waitRow(t *testing.T, ctx context.Context, s *client.WSStream, rows map[string]client.Row, key string) {
	t.Helper()
	for rows[key] == nil {
		syncWS(t, ctx, s, rows)
	}
}

func TestWSMultiplex(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, "alice", nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := &wsMux{t: t, ctx: ctx, e: e, conn: conn, streams: map[string]*client.WSStream{}, rows: map[string]map[string]client.Row{}}
	for _, name := range []string{"items", "news", "mine", "keys"} {
		s, err := conn.Stream(ctx, name, client.WSStreamOptions{Live: true})
		if err != nil {
			t.Fatal(err)
		}
		m.streams[name], m.rows[name] = s, map[string]client.Row{}
	}
	for name, s := range m.streams {
		syncWS(t, ctx, s, m.rows[name])
	}
	m.checkSynced()

	// Live changes: only the acme row reaches items.
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (10,'globex','alice','g10','n'),(11,'acme','zed','a11','n')`)
	waitRow(t, ctx, m.streams["items"], m.rows["items"], `"public"."items"/"11"`)
	if m.rows["items"][`"public"."items"/"10"`] != nil {
		t.Error("a globex row reached an acme token")
	}
	waitRow(t, ctx, m.streams["mine"], m.rows["mine"], `"public"."items"/"10"`)

	m.rotate()
	m.checkColumns()
	m.checkRawColumns()
	var we *client.WSError
	unknown, _ := conn.Stream(ctx, "nope", client.WSStreamOptions{})
	if _, err := unknown.Next(ctx); !errors.As(err, &we) || we.Status != 404 {
		t.Errorf("unknown shape: %v", err)
	}
}

// wsMux is TestWSMultiplex's connection, its live streams by shape name
// and the rows each has synced.
type wsMux struct {
	t       *testing.T
	ctx     context.Context
	e       *env
	conn    *client.WSConn
	streams map[string]*client.WSStream
	rows    map[string]map[string]client.Row
}

// rowKeys returns the keys of m, for messages.
func rowKeys(m map[string]client.Row) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// checkSynced checks the rows each shape synced: alice's acme items
// without the note, the news, her own items and her own keys only.
func (m *wsMux) checkSynced() {
	t, rows := m.t, m.rows
	t.Helper()
	if len(rows["items"]) != 2 || rows["items"][`"public"."items"/"1"`] == nil || rows["items"][`"public"."items"/"2"`] == nil {
		t.Errorf("items: %v", rowKeys(rows["items"]))
	}
	for _, r := range rows["items"] {
		if _, ok := r["note"]; ok || r["tenant_id"] != "acme" {
			t.Errorf("items row outside the rule: %v", r)
		}
	}
	if len(rows["news"]) != 1 || len(rows["mine"]) != 1 || rows["mine"][`"public"."items"/"1"`] == nil {
		t.Errorf("news %v, mine %v", rowKeys(rows["news"]), rowKeys(rows["mine"]))
	}
	if len(rows["keys"]) != 2 {
		t.Errorf("keys: %v", rowKeys(rows["keys"]))
	}
	for _, r := range rows["keys"] {
		if r["user_id"] != "alice" {
			t.Errorf("another user's key: %v", r)
		}
	}
}

// rotate: a rotation of items gives must-refetch, then the same rows
// again under a new handle.
func (m *wsMux) rotate() {
	t, ctx, items, rows := m.t, m.ctx, m.streams["items"], m.rows["items"]
	t.Helper()
	old := items.Handle()
	if n, err := m.e.up.Rotate("items"); err != nil || n == 0 {
		t.Fatalf("Rotate: %d %v", n, err)
	}
	sawRefetch := false
	for !sawRefetch {
		msg, err := items.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if msg.IsMustRefetch() {
			sawRefetch = true
			clear(rows)
		}
	}
	syncWS(t, ctx, items, rows)
	if len(rows) != 3 || items.Handle() == old {
		t.Errorf("after rotation: %v, handle %q (old %q)", rowKeys(rows), items.Handle(), old)
	}
}

// checkColumns: a shape the token may not read is refused on the same
// connection; a narrower one is served.
func (m *wsMux) checkColumns() {
	t, ctx := m.t, m.ctx
	t.Helper()
	bad, err := m.conn.Stream(ctx, "items", client.WSStreamOptions{Columns: []string{"note"}})
	if err != nil {
		t.Fatal(err)
	}
	var we *client.WSError
	if _, err := bad.Next(ctx); !errors.As(err, &we) || we.Status != 400 {
		t.Errorf("columns outside the rule: %v", err)
	}
	narrow, _ := m.conn.Stream(ctx, "items", client.WSStreamOptions{Columns: []string{"id", "title"}})
	narrowRows := map[string]client.Row{}
	syncWS(t, ctx, narrow, narrowRows)
	for _, r := range narrowRows {
		if len(r) != 2 || r["title"] == nil {
			t.Errorf("narrowed row %v", r)
		}
	}
}

// checkRawColumns: in raw frames, an empty or foreign columns list never
// widens the rule.
func (m *wsMux) checkRawColumns() {
	t, ctx := m.t, m.ctx
	t.Helper()
	raw := rawWS(t, ctx, m.e)
	defer raw.CloseNow()
	writeWS(t, ctx, raw, map[string]any{"type": "auth", "token": token(t, "alice", nil)})
	for i, cols := range [][]string{{}, {"note"}, {`"Note"`}, {"id", "note"}, {""}} {
		writeWS(t, ctx, raw, map[string]any{"type": "subscribe", "id": fmt.Sprint("c", i), "shape": "items", "columns": cols, "live": false})
	}
	for errs := 0; errs < 5; {
		_, b, err := raw.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f struct{ Type string }
		json.Unmarshal(b, &f)
		switch f.Type {
		case "auth_ok":
		case "error":
			errs++
		default:
			t.Fatalf("columns outside the rule got %s", b)
		}
	}
}

func TestWSForbidden(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, "alice", map[string]any{"roles": []string{"guest"}}))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ := conn.Stream(ctx, "items", client.WSStreamOptions{})
	var we *client.WSError
	if _, err := s.Next(ctx); !errors.As(err, &we) || we.Status != 403 {
		t.Errorf("role not allowed: %v", err)
	}
	// The connection still serves other shapes.
	news, _ := conn.Stream(ctx, "news", client.WSStreamOptions{})
	syncWS(t, ctx, news, map[string]client.Row{})
}

// rawWS dials /v1/ws without the client.
func rawWS(t *testing.T, ctx context.Context, e *env) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(ctx, e.wsURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	return c
}

func writeWS(t *testing.T, ctx context.Context, c *websocket.Conn, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
}

// readUntilClose reads frames until the connection closes and returns
// the close status.
func readUntilClose(ctx context.Context, c *websocket.Conn) (websocket.StatusCode, int) {
	n := 0
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			return websocket.CloseStatus(err), n
		}
		n++
	}
}

// liveNews returns the live upstream requests for public_news.
func (e *env) liveNews() []string {
	var out []string
	for _, q := range e.rec.all() {
		if q.Get("table") == "public_news" && q.Get("live") == "true" {
			out = append(out, q.Get("handle")+"|"+q.Get("offset")+"|"+q.Get("cursor"))
		}
	}
	return out
}

func TestWSCoalesce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 8
	var streams []*client.WSStream
	var rows []map[string]client.Row
	for i := range n {
		conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, fmt.Sprintf("user%d", i), nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for range 2 { // two subscriptions of the same shape on each connection
			s, _ := conn.Stream(ctx, "news", client.WSStreamOptions{Live: true})
			streams = append(streams, s)
			rows = append(rows, map[string]client.Row{})
		}
	}
	for i, s := range streams {
		syncWS(t, ctx, s, rows[i])
	}
	for round := 2; round < 5; round++ {
		pgtest.Exec(t, e.db, fmt.Sprintf(`INSERT INTO public_news VALUES (%d,'r')`, round))
		for i, s := range streams {
			waitRow(t, ctx, s, rows[i], fmt.Sprintf(`"public"."public_news"/"%d"`, round))
		}
	}
	polls := map[string]int{}
	live := e.liveNews()
	for _, k := range live {
		polls[k]++
	}
	for k, c := range polls {
		if c > 1 {
			t.Errorf("live poll %s sent upstream %d times", k, c)
		}
	}
	t.Logf("%d subscriptions on %d connections: %d live upstream polls for %d distinct positions", 2*n, n, len(live), len(polls))
	if len(live) > 10 {
		t.Errorf("%d live upstream polls for 3 changes", len(live))
	}
}

func TestWSUnsubscribe(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, "alice", nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ := conn.Stream(ctx, "news", client.WSStreamOptions{Live: true})
	syncWS(t, ctx, s, map[string]client.Row{})
	time.Sleep(200 * time.Millisecond) // the first live poll is under way
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	before := len(e.liveNews())
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (2,'x')`)
	time.Sleep(4 * time.Second) // longer than the upstream long-poll timeout
	if after := len(e.liveNews()); after != before || before == 0 {
		t.Errorf("live polls: %d before the wait, %d after unsubscribing", before, after)
	}
	if _, err := s.Next(ctx); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Next after Close: %v", err)
	}
}

func TestWSSlowConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.p.ws.queueBytes = 1 << 20
	pgtest.Exec(t, e.db, `INSERT INTO public_news SELECT g, repeat('x', 400) FROM generate_series(2, 1500) g`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := rawWS(t, ctx, e)
	defer c.CloseNow()
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": token(t, "alice", nil)})
	for i := range 60 {
		writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": fmt.Sprint("s", i), "shape": "news", "live": false})
	}
	// Read nothing until the proxy has given up on this consumer.
	e.awaitMetric(t, "shapeseal_proxy_ws_slow_consumer_closes_total", "1")
	st, frames := readUntilClose(ctx, c)
	if st != StatusSlowConsumer {
		t.Fatalf("close status %v after %d frames, want %d", st, frames, StatusSlowConsumer)
	}
	e.awaitMetric(t, `shapeseal_proxy_ws_connections_closed_total{reason="slow_consumer",code="4008"}`, "1")
	e.awaitMetric(t, "shapeseal_proxy_ws_connections", "0")
	for i := 0; i < 50 && !strings.Contains(e.logs.String(), "\"reason\":\"slow consumer\""); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(e.logs.String(), "\"reason\":\"slow consumer\"") {
		t.Error("the audit line does not say slow consumer")
	}
	// Memory stayed bounded: the proxy dropped the queue.
	t.Logf("closed with %d after %d frames", st, frames)
}

func TestWSMethodAndOrigin(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example"} })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if resp := e.do("POST", e.url+"/v1/ws", "", nil); resp.StatusCode != 405 {
		t.Errorf("POST: %d", resp.StatusCode)
	}
	h := http.Header{"Origin": {"https://evil.example"}}
	if _, _, err := websocket.Dial(ctx, e.wsURL(), &websocket.DialOptions{HTTPHeader: h}); err == nil {
		t.Error("a foreign origin was accepted")
	}
	h.Set("Origin", "https://app.example")
	c, _, err := websocket.Dial(ctx, e.wsURL(), &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("allowed origin: %v", err)
	}
	c.CloseNow()
}

func TestWSLiveLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Limits.MaxLivePerUser = 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok := token(t, "alice", nil)
	first, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(tok)})
	if err != nil {
		t.Fatal(err)
	}
	// A second WebSocket of the same user exceeds MaxLivePerUser.
	c := rawWS(t, ctx, e)
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": tok})
	if st, _ := readUntilClose(ctx, c); st != websocket.StatusTryAgainLater {
		t.Errorf("second connection: %v", st)
	}
	// Another user is not affected, and closing the first frees the slot.
	if other, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, "bob", nil))}); err != nil {
		t.Error(err)
	} else {
		other.Close()
	}
	first.Close()
	for i := 0; ; i++ {
		again, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(tok)})
		if err == nil {
			again.Close()
			break
		}
		if i == 40 {
			t.Fatalf("slot not released: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wsFrame is a server frame as the metrics test reads it.
type wsFrame struct {
	Type     string `json:"type"`
	ID       string `json:"id"`
	Status   int    `json:"status"`
	UpToDate bool   `json:"up_to_date"`
	size     int
}

// readFrame reads the next server frame.
func readFrame(t *testing.T, ctx context.Context, c *websocket.Conn) wsFrame {
	t.Helper()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var f wsFrame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	f.size = len(b)
	return f
}

// readFrameUntil reads frames until one satisfies ok, skipping the others
// (live frames of other subscriptions).
func readFrameUntil(t *testing.T, ctx context.Context, c *websocket.Conn, ok func(wsFrame) bool) wsFrame {
	t.Helper()
	for {
		if f := readFrame(t, ctx, c); ok(f) {
			return f
		}
	}
}
