package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// metric returns the value of one series (name with its labels, exactly as
// written) from GET /metrics, or "" when the series is absent.
func (e *env) metric(t *testing.T, series string) string {
	t.Helper()
	resp := e.do("GET", e.url+"/metrics", "", nil)
	for line := range strings.SplitSeq(readBody(t, resp), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// wantMetric asserts the current value of a series.
func (e *env) wantMetric(t *testing.T, series, want string) {
	t.Helper()
	if got := e.metric(t, series); got != want {
		t.Errorf("%s = %q, want %q", series, got, want)
	}
}

// awaitMetric waits until a series has a value: for figures updated just
// after the frame the client reacts to (a connection's end, a write's
// completion). The bound only turns a hang into a failure.
func (e *env) awaitMetric(t *testing.T, series, want string) {
	t.Helper()
	deadline := time.Now().Add(50 * time.Second)
	for {
		got := e.metric(t, series)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q, want %q", series, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWSMetrics follows the WebSocket figures of /metrics through real
// sessions: connections, subscriptions, frames and bytes, token refreshes
// and the reasons connections end.
func TestWSMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e.wantMetric(t, "shapeseal_proxy_ws_connections", "0")
	e.wantMetric(t, `shapeseal_proxy_ws_token_refreshes_total{result="ok"}`, "0")

	c := rawWS(t, ctx, e)
	defer c.CloseNow()
	alice := token(t, "alice", nil)
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": alice})
	frames, size := 1, readFrame(t, ctx, c).size // auth_ok
	e.wantMetric(t, "shapeseal_proxy_ws_connections", "1")

	// A non-live subscription: messages up to date, then done. Every frame
	// the client read was counted, bytes included, and the subscription
	// left the gauge.
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "n", "shape": "news", "live": false})
	for {
		f := readFrame(t, ctx, c)
		frames, size = frames+1, size+f.size
		if f.Type == "done" {
			break
		}
		if f.Type != "messages" || f.ID != "n" {
			t.Fatalf("frame %+v", f)
		}
	}
	e.awaitMetric(t, "shapeseal_proxy_ws_messages_sent_total", fmt.Sprint(frames))
	e.wantMetric(t, "shapeseal_proxy_ws_bytes_sent_total", fmt.Sprint(size))
	e.awaitMetric(t, `shapeseal_proxy_ws_subscriptions{shape="news"}`, "0")

	// A live subscription stays on the gauge until it is unsubscribed.
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "l", "shape": "items", "live": true})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.ID == "l" && f.UpToDate })
	e.wantMetric(t, `shapeseal_proxy_ws_subscriptions{shape="items"}`, "1")

	// Refreshes: a valid token, another user's, and garbage.
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": token(t, "alice", nil)})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.Type == "auth_ok" })
	e.wantMetric(t, `shapeseal_proxy_ws_token_refreshes_total{result="ok"}`, "1")
	for i, tok := range []string{token(t, "bob", nil), "not.a.token"} {
		writeWS(t, ctx, c, map[string]any{"type": "auth", "token": tok})
		if f := readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.Type != "messages" }); f.Type != "error" || f.Status != 401 {
			t.Fatalf("refused refresh: %+v", f)
		}
		e.wantMetric(t, `shapeseal_proxy_ws_token_refreshes_total{result="failed"}`, fmt.Sprint(i+1))
	}
	e.wantMetric(t, `shapeseal_proxy_ws_token_refreshes_total{result="ok"}`, "1")

	writeWS(t, ctx, c, map[string]any{"type": "unsubscribe", "id": "l"})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.Type == "done" && f.ID == "l" })
	e.wantMetric(t, `shapeseal_proxy_ws_subscriptions{shape="items"}`, "0")

	// The client closes: the connection leaves the gauge with its code.
	c.Close(websocket.StatusNormalClosure, "bye")
	e.awaitMetric(t, `shapeseal_proxy_ws_connections_closed_total{reason="client",code="1000"}`, "1")
	e.awaitMetric(t, "shapeseal_proxy_ws_connections", "0")
	// A code of the client's own choosing is not a label value.
	c = rawWS(t, ctx, e)
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": alice})
	readFrame(t, ctx, c)
	c.Close(4321, "mine")
	e.awaitMetric(t, `shapeseal_proxy_ws_connections_closed_total{reason="client",code="other"}`, "1")

	// Connections the server closes, each under its reason.
	for _, k := range []struct {
		reason string
		first  []byte
	}{
		{"no_auth", []byte(`{"type":"subscribe","id":"s","shape":"news"}`)},
		{"bad_message", []byte(`not json`)},
		{"invalid_token", []byte(`{"type":"auth","token":"not.a.token"}`)},
	} {
		c := rawWS(t, ctx, e)
		if err := c.Write(ctx, websocket.MessageText, k.first); err != nil {
			t.Fatal(err)
		}
		if st, _ := readUntilClose(ctx, c); st != websocket.StatusPolicyViolation {
			t.Errorf("%s: closed with %v", k.reason, st)
		}
		e.awaitMetric(t, `shapeseal_proxy_ws_connections_closed_total{reason="`+k.reason+`",code="1008"}`, "1")
	}
	e.awaitMetric(t, "shapeseal_proxy_ws_connections", "0")
	e.wantMetric(t, "shapeseal_proxy_ws_slow_consumer_closes_total", "0")
	e.wantMetric(t, `shapeseal_proxy_ws_token_refreshes_total{result="failed"}`, "2")
}
