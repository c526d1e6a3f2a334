package proxy

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

func TestWSAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.p.ws.authTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok := token(t, "alice", nil)

	// A token (or anything) in the URL is refused before the upgrade.
	resp := e.do("GET", e.url+"/v1/ws?token="+tok, "", nil)
	if body := readBody(t, resp); resp.StatusCode != 400 || strings.Contains(body, tok) {
		t.Errorf("token in URL: %d %s", resp.StatusCode, body)
	}
	if _, _, err := websocket.Dial(ctx, e.wsURL()+"?token="+tok, nil); err == nil {
		t.Error("a WebSocket with a token in the URL was accepted")
	}
	// Anything before auth, a bad token, or silence: policy violation.
	c := rawWS(t, ctx, e)
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "s1", "shape": "news"})
	if st, n := readUntilClose(ctx, c); st != websocket.StatusPolicyViolation || n != 0 {
		t.Errorf("subscribe before auth: %v after %d frames", st, n)
	}
	c = rawWS(t, ctx, e)
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": sign(t, "none", "", nil, claimsFor("alice", nil))})
	if st, _ := readUntilClose(ctx, c); st != websocket.StatusPolicyViolation {
		t.Errorf("alg none: %v", st)
	}
	c = rawWS(t, ctx, e)
	start := time.Now()
	if st, _ := readUntilClose(ctx, c); st != websocket.StatusPolicyViolation || time.Since(start) > 5*time.Second {
		t.Errorf("no auth: %v after %v", st, time.Since(start))
	}
	// A refresh naming another user is refused, the connection stays.
	c = rawWS(t, ctx, e)
	defer c.CloseNow()
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": tok})
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": token(t, "bob", nil)})
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "n", "shape": "news", "live": false})
	var types []string
	for len(types) < 5 {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f struct{ Type string }
		json.Unmarshal(b, &f)
		types = append(types, f.Type)
		if f.Type == "done" {
			break
		}
	}
	if got := strings.Join(types, ","); !strings.HasPrefix(got, "auth_ok,error,messages,") || !strings.HasSuffix(got, ",done") {
		t.Errorf("frames %v", types)
	}
}

// refreshing is a RefreshableTokenSource counting its tokens.
type refreshing struct {
	t     *testing.T
	n     atomic.Int32
	exp   time.Duration
	first string
}

func (r *refreshing) Token(context.Context) (string, error) {
	if r.n.Add(1) == 1 && r.first != "" {
		return r.first, nil
	}
	return token(r.t, "alice", map[string]any{"exp": time.Now().Add(r.exp).Unix()}), nil
}

func (r *refreshing) Refresh(ctx context.Context, _ string) (string, error) { return r.Token(ctx) }

func TestWSRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Valid for about 2 s more (the leeway is 5 s).
	src := &refreshing{t: t, exp: 10 * time.Minute,
		first: token(t, "alice", map[string]any{"exp": time.Now().Add(-3 * time.Second).Unix()})}
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: src})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ := conn.Stream(ctx, "news", client.WSStreamOptions{Live: true})
	rows := map[string]client.Row{}
	syncWS(t, ctx, s, rows)
	// The first poll after the expiry asks for a new token (auth_required).
	for deadline := time.Now().Add(15 * time.Second); src.n.Load() < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the expired token was not replaced")
		}
	}
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (2,'after expiry')`)
	waitRow(t, ctx, s, rows, `"public"."public_news"/"2"`)
	// A proactive refresh keeps working too.
	if err := conn.Reauth(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (3,'after reauth')`)
	waitRow(t, ctx, s, rows, `"public"."public_news"/"3"`)
}

// seqTokens hands out its tokens in order, then the last one.
type seqTokens struct {
	n    atomic.Int32
	toks []string
}

func (s *seqTokens) Token(context.Context) (string, error) {
	i := min(int(s.n.Add(1))-1, len(s.toks)-1)
	return s.toks[i], nil
}

func TestWSRefreshChangesShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := &seqTokens{toks: []string{token(t, "alice", nil),
		token(t, "alice", map[string]any{"tenant_ids": []string{"acme", "globex"}})}}
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: src})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ := conn.Stream(ctx, "items", client.WSStreamOptions{Live: true})
	rows := map[string]client.Row{}
	syncWS(t, ctx, s, rows)
	if len(rows) != 2 {
		t.Fatalf("acme rows: %d", len(rows))
	}
	if err := conn.Reauth(ctx); err != nil {
		t.Fatal(err)
	}
	// The live poll in flight ends (long-poll timeout), the next one sees
	// the new tenants: must-refetch, then acme and globex rows.
	refetched := false
	for !refetched {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		refetched = m.IsMustRefetch()
	}
	clear(rows)
	syncWS(t, ctx, s, rows)
	if len(rows) != 3 {
		t.Errorf("after the tenants changed: %d rows", len(rows))
	}
}
