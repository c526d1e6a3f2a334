package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// The attacks below are the leaks of the proxy's first version, one test
// each: what an anonymous caller could learn about the shape names, token
// strings that were accepted in many forms, a device claim that widened
// the keys shape, a WebSocket beyond the live limit, an unthrottled health
// check and the upstream's server header.

// TestAttackAnonymousShapeNames: without a valid token, a configured
// shape name and an unknown one get the same answers (status, headers,
// body) for every method, the CORS preflight included, and /metrics never
// shows either name for those requests.
func TestAttackAnonymousShapeNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	forged := sign(t, "HS256", "hs", otherHMAC, claimsFor("alice", nil))
	type probe struct {
		method, query, auth, body string
		hdr                       map[string]string
	}
	preflight := map[string]string{"Origin": "https://app.test", "Access-Control-Request-Method": "GET",
		"Access-Control-Request-Headers": "authorization"}
	probes := []probe{
		{method: "OPTIONS"},
		{method: "OPTIONS", hdr: preflight},
		{method: "OPTIONS", query: "offset=-1", hdr: preflight},
		{method: "GET", query: "offset=-1"},
		{method: "GET", query: "offset=-1&table=users"},
		{method: "GET", query: "offset=-1", auth: "Bearer " + forged},
		{method: "GET", query: "offset=-1", auth: "Bearer not-a-token"},
		{method: "GET", query: "offset=-1", auth: "Basic YWxpY2U6cA=="},
		{method: "HEAD", query: "offset=-1"},
		{method: "GET", query: "offset=-1", body: `{"table":"users"}`},
		{method: "POST", query: "offset=-1", body: `{}`},
		{method: "PUT", query: "offset=-1"},
		{method: "DELETE", query: "offset=-1"},
		{method: "GET", query: "offset=-1", hdr: map[string]string{"Origin": "https://app.test"}},
	}
	answer := func(p probe, name string) string {
		t.Helper()
		var body *strings.Reader
		if p.body != "" {
			body = strings.NewReader(p.body)
		}
		u := e.url + "/v1/shapes/" + name
		if p.query != "" {
			u += "?" + p.query
		}
		var req *http.Request
		if body != nil {
			req, _ = http.NewRequest(p.method, u, body)
		} else {
			req, _ = http.NewRequest(p.method, u, nil)
		}
		if p.auth != "" {
			req.Header.Set("Authorization", p.auth)
		}
		for k, v := range p.hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b := readBody(t, resp)
		resp.Header.Del("X-Request-Id")
		resp.Header.Del("Date")
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range resp.Header {
				if !yield(k) {
					return
				}
			}
		})
		var out strings.Builder
		out.WriteString(resp.Status + "\n")
		for _, k := range keys {
			out.WriteString(k + ": " + strings.Join(resp.Header[k], ", ") + "\n")
		}
		return out.String() + "\n" + b
	}
	for _, p := range probes {
		known, unknown := answer(p, "items"), answer(p, "nope")
		if known != unknown {
			t.Errorf("%s %v: a configured shape answers\n%s\nand an unknown one\n%s", p.method, p, known, unknown)
		}
	}
	// The preflight is answered (a browser needs it before sending the
	// token), for every well-formed name alike.
	resp := e.do("OPTIONS", e.url+"/v1/shapes/nope", "", nil)
	readBody(t, resp)
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("preflight of an unknown name: %d", resp.StatusCode)
	}
	// /metrics (public here) shows neither name for those requests.
	page := e.metricsText(t)
	for _, name := range []string{`shape="items"`, `shape="nope"`} {
		if strings.Contains(page, name) {
			t.Errorf("/metrics shows %s after anonymous requests only:\n%s", name, page)
		}
	}
	if !strings.Contains(page, `shapeseal_proxy_requests_total{shape="-",status="401"}`) {
		t.Errorf("anonymous 401s are not counted under \"-\":\n%s", page)
	}
	// Once authenticated, requests are labelled with their shape again.
	resp = e.do("GET", e.url+"/v1/shapes/news?offset=-1", token(t, "alice", nil), nil)
	readBody(t, resp)
	if page := e.metricsText(t); !strings.Contains(page, `shapeseal_proxy_requests_total{shape="news",status="200"} 1`) {
		t.Errorf("an authenticated request is not labelled with its shape:\n%s", page)
	}
}

// TestAttackMetricsOwnListener: with MetricsListen, /metrics is gone from
// the proxy's routes (a 404 like any unknown path) and served on its own
// listener by Proxy.Serve, and by Proxy.MetricsHandler.
func TestAttackMetricsOwnListener(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := newEnv(t, func(c *Config) { c.MetricsListen = addr })
	resp := e.do("GET", e.url+"/v1/shapes/news?offset=-1", token(t, "alice", nil), nil)
	readBody(t, resp)
	resp = e.do("GET", e.url+"/metrics", "", nil)
	body := readBody(t, resp)
	other := e.do("GET", e.url+"/no-such-path", "", nil)
	if otherBody := readBody(t, other); resp.StatusCode != 404 || body != otherBody {
		t.Errorf("/metrics with MetricsListen: %d %s", resp.StatusCode, body)
	}
	proxyURL, _ := parkServer(t, e.p)
	resp = e.do("GET", proxyURL+"/metrics", "", nil)
	if body := readBody(t, resp); resp.StatusCode != 404 || strings.Contains(body, "shapeseal_proxy") {
		t.Errorf("Serve's proxy listener serves /metrics: %d", resp.StatusCode)
	}
	var page string
	waitFor(t, "the metrics listener", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		page = readBody(t, resp)
		return resp.StatusCode == 200
	})
	if !strings.Contains(page, `shapeseal_proxy_requests_total{shape="news",status="200"} 1`) {
		t.Errorf("metrics listener:\n%s", page)
	}
	rec := httptest.NewRecorder()
	e.p.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/anything", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "shapeseal_proxy_live_requests") {
		t.Errorf("MetricsHandler: %d", rec.Code)
	}
	// A busy address is Serve's error, not a silent public fallback.
	p2, err := New(Config{Upstream: e.upURL, Auth: testAuth(), Shapes: testRules(), MetricsListen: addr})
	if err != nil {
		t.Fatal(err)
	}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln2.Close()
	if err := p2.Serve(&http.Server{Handler: p2}, ln2); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Errorf("Serve with a busy metrics address: %v", err)
	}
}

// TestAttackEmptyDeviceClaim: a token whose device claim names no device
// ("" or not a string) is refused on the tenant_keys shape, over HTTP and
// WebSocket; it is never served every device's wrapped keys.
func TestAttackEmptyDeviceClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	before := e.rec.count()
	for name, tc := range map[string]struct {
		device any
		want   int
	}{
		"empty string": {"", 403},
		"number":       {42, 403},
		"boolean":      {true, 403},
		"null":         {json.RawMessage("null"), 401},
		"object":       {map[string]any{"id": "laptop"}, 401},
		"array":        {[]string{"laptop", "phone"}, 401},
	} {
		tok := token(t, "alice", map[string]any{"device_id": tc.device})
		resp := e.do("GET", e.url+"/v1/shapes/keys?offset=-1", tok, nil)
		if body := readBody(t, resp); resp.StatusCode != tc.want {
			t.Errorf("device_id %s: %d %s, want %d", name, resp.StatusCode, body, tc.want)
		}
	}
	if n := e.rec.count() - before; n != 0 {
		t.Fatalf("%d keys requests with a bad device claim reached upstream", n)
	}
	// Over a WebSocket: a 403 error frame for the subscription.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, "alice", map[string]any{"device_id": ""}))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ := conn.Stream(ctx, "keys", client.WSStreamOptions{})
	var we *client.WSError
	if _, err := s.Next(ctx); !errors.As(err, &we) || we.Status != 403 {
		t.Errorf("WebSocket keys with an empty device: %v", err)
	}
	if n := e.rec.count() - before; n != 0 {
		t.Fatalf("%d keys requests with a bad device claim reached upstream", n)
	}
	// A named device gets its own keys; no device claim at all, the
	// user's (as documented): both unchanged.
	if rows := follow(t, e.url+"/v1/shapes/keys", token(t, "alice", map[string]any{"device_id": "phone"})); len(rows) != 1 {
		t.Errorf("alice phone: %v", rows)
	}
	if rows := follow(t, e.url+"/v1/shapes/keys", token(t, "alice", nil)); len(rows) != 2 {
		t.Errorf("alice, no device claim: %v", rows)
	}
}

// flipUnused sets an unused low bit of the last character of an unpadded
// base64url segment: the same bytes, another string; false when the
// segment has no unused bits.
func flipUnused(seg string) (string, bool) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(seg)%4 == 0 {
		return "", false
	}
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last^1]), true
}

// TestAttackTokenVariants: a token is accepted in one form only. Each
// variant below carries a valid signature (go-jose alone accepts it, as
// checked) or, for the whitespace ones, the same token; all were accepted
// before, each under its own cache key. All are refused now, while the
// token itself is accepted, over HTTP and as a WebSocket's auth message.
// The one exception is ECDSA's other s, which issuers send as often as the
// low one: it is accepted as the same token, under the low-s form's cache
// key, with the very Identity of that entry, so it widens nothing.
func TestAttackTokenVariants(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	c := claimsFor("alice", map[string]any{"roles": []string{"reader"}, "tenant_ids": []string{"acme"}})
	tok := tokenWithUnusedBits(t, c)
	seg := splitDots(tok)
	esTok := sign(t, "ES256", "ec", ecKey, c)
	highS := checkedHighS(t, esTok)
	variants := tokenVariants(t, tok, highS, c)
	// Whitespace and other characters around or in the token.
	headerVariants := map[string]string{
		"no-break space after":     "Bearer " + tok + "\u00a0",
		"ideographic space before": "Bearer \u3000" + tok,
		"em space after":           "Bearer " + tok + "\u2003",
		"next line after":          "Bearer " + tok + "\u0085",
		"tab between":              "Bearer\t" + tok,
		"no-break space between":   "Bearer\u00a0" + tok,
		"padding":                  "Bearer " + tok + "==",
		"dot after":                "Bearer " + tok + ".",
	}
	get := func(auth string) int {
		req, _ := http.NewRequest("GET", e.url+"/v1/shapes/items?offset=-1", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		return resp.StatusCode
	}
	for _, good := range []string{tok, esTok} {
		for range 2 { // the second from the verified-token cache
			if st := get("Bearer " + good); st != 200 {
				t.Fatalf("the token itself: %d", st)
			}
		}
	}
	entries := cacheEntries(e.p.verifier)
	// The high-s form is the same token: accepted, from the low-s form's
	// entry (no new one), as the same Identity.
	if st := get("Bearer " + highS); st != 200 {
		t.Errorf("high s: %d, want 200", st)
	}
	idLow, errLow := e.p.verifier.Verify(t.Context(), esTok)
	idHigh, errHigh := e.p.verifier.Verify(t.Context(), highS)
	if errLow != nil || errHigh != nil || idLow != idHigh {
		t.Errorf("high s: identity %p (%v), low s: %p (%v): not one cache entry", idHigh, errHigh, idLow, errLow)
	}
	for name, v := range variants {
		if st := get("Bearer " + v.token); st != 401 {
			t.Errorf("%s: %d, want 401", name, st)
		}
	}
	for name, h := range headerVariants {
		if st := get(h); st != 401 {
			t.Errorf("header %s: %d, want 401", name, st)
		}
	}
	if n := cacheEntries(e.p.verifier); n != entries {
		t.Errorf("the variants made %d cache entries, want none", n-entries)
	}
	if st := get("Bearer   " + tok); st != 200 {
		t.Errorf("several spaces after Bearer (RFC 6750: 1*SP): %d", st)
	}
	// A WebSocket's auth message carries the token alone: nothing trimmed.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsAuthRefused(t, ctx, e, map[string]string{
		"leading space":     " " + tok,
		"trailing newline":  tok + "\n",
		"line break inside": seg[0] + "." + seg[1][:10] + "\r\n" + seg[1][10:] + "." + seg[2],
		"unused bits":       variants["unused bits in the signature"].token,
	})
	// The high-s form authenticates a WebSocket as the same token.
	c2 := rawWS(t, ctx, e)
	defer c2.CloseNow()
	writeWS(t, ctx, c2, map[string]any{"type": "auth", "token": highS})
	if f := readFrame(t, ctx, c2); f.Type != "auth_ok" {
		t.Errorf("WebSocket auth, high s: %+v", f)
	}
	if n := cacheEntries(e.p.verifier); n != entries {
		t.Errorf("the variants made %d cache entries, want none", n-entries)
	}
}

// tokenWithUnusedBits signs c with RS256, padded so that every segment of
// the token has unused bits to flip.
func tokenWithUnusedBits(t *testing.T, c map[string]any) string {
	t.Helper()
	var tok string
	for pad := ""; ; pad += "x" {
		c["pad"] = pad
		tok = sign(t, "RS256", "rs", rsaKey, c)
		_, hasBits := flipUnused(splitDots(tok)[1])
		if hasBits {
			break
		}
	}
	if _, ok := flipUnused(splitDots(tok)[0]); !ok {
		t.Fatal("the header has no unused bits: change it")
	}
	return tok
}

// checkedHighS is highS of esTok (ES256, signed with ecKey), checked to
// verify with crypto/ecdsa and with go-jose: (r, n-s) is as valid as
// (r, s).
func checkedHighS(t *testing.T, esTok string) string {
	t.Helper()
	hs := highS(esTok)
	es := splitDots(hs)
	sig, _ := b64.DecodeString(es[2])
	digest := sha256.Sum256([]byte(es[0] + "." + es[1]))
	if !ecdsa.Verify(&ecKey.PublicKey, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("the high-s variant does not verify: the test is wrong")
	}
	if jws, err := jose.ParseSignedCompact(hs, []jose.SignatureAlgorithm{jose.ES256}); err != nil {
		t.Fatalf("high s: not a valid variant (go-jose: %v): the test is wrong", err)
	} else if _, err := jws.Verify(&ecKey.PublicKey); err != nil {
		t.Fatalf("high s: not a valid variant (go-jose: %v): the test is wrong", err)
	}
	return hs
}

// tokenVariant is another string of a token, or a token signed by the
// issuer's key that is not canonical.
type tokenVariant struct {
	token   string
	joseKey any // when set, go-jose verifies the variant with it
}

// tokenVariants are the variants of tok (RS256, every segment with unused
// bits), of highS and of tokens with the claims c that the proxy must
// refuse. Those with a joseKey are checked to verify with go-jose.
func tokenVariants(t *testing.T, tok, highS string, c map[string]any) map[string]tokenVariant {
	t.Helper()
	variants := map[string]tokenVariant{}
	seg := splitDots(tok)
	for i, name := range []string{"header", "payload", "signature"} {
		s := slices.Clone(seg)
		s[i], _ = flipUnused(s[i])
		variants["unused bits in the "+name] = tokenVariant{strings.Join(s, "."), &rsaKey.PublicKey}
	}
	// High s is accepted as the same token (see the test), not refused;
	// with unused bits as well it is not canonical.
	variants["high s with unused bits in the signature"] = tokenVariant{token: setUnusedBit(highS)}
	// Signed by the issuer's key, but not one JSON object each.
	hdr := `{"alg":"RS256","kid":"rs"}`
	body, _ := json.Marshal(c)
	for name, hp := range map[string][2]string{
		"duplicate claim":           {hdr, strings.TrimSuffix(string(body), "}") + `,"sub":"mallory"}`},
		"duplicate nested claim":    {hdr, strings.TrimSuffix(string(body), "}") + `,"app":{"role":"a","role":"b"}}`},
		"data after the claims":     {hdr, string(body) + `{"sub":"mallory"}`},
		"space after the claims":    {hdr, string(body) + ` `},
		"newline after the claims":  {hdr, string(body) + "\n"},
		"space before the claims":   {hdr, " " + string(body)},
		"claims not UTF-8":          {hdr, strings.TrimSuffix(string(body), "}") + `,"x":"` + "\xff" + `"}`},
		"duplicate header key":      {`{"alg":"RS256","kid":"rs","kid":"other"}`, string(body)},
		"data after the header":     {hdr + ` `, string(body)},
		"critical header extension": {`{"alg":"RS256","kid":"rs","crit":["exp"],"exp":1}`, string(body)},
		"unencoded payload (b64)":   {`{"alg":"RS256","kid":"rs","b64":false,"crit":["b64"]}`, string(body)},
	} {
		variants[name] = tokenVariant{token: signRaw(t, "RS256", rsaKey, hp[0], hp[1])}
	}
	for name, v := range variants {
		if v.joseKey == nil {
			continue
		}
		jws, err := jose.ParseSignedCompact(v.token, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
		if err == nil {
			_, err = jws.Verify(v.joseKey)
		}
		if err != nil {
			t.Fatalf("%s: not a valid variant (go-jose: %v): the test is wrong", name, err)
		}
	}
	return variants
}

// wsAuthRefused checks that each token, as a WebSocket's first auth
// message, closes the connection with 1008.
func wsAuthRefused(t *testing.T, ctx context.Context, e *env, tokens map[string]string) {
	t.Helper()
	for name, bad := range tokens {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c := rawWS(t, ctx, e)
		writeWS(t, ctx, c, map[string]any{"type": "auth", "token": bad})
		if st, _ := readUntilClose(ctx, c); st != 1008 {
			t.Errorf("WebSocket auth, %s: closed with %v, want 1008", name, st)
		}
		c.CloseNow()
		cancel()
	}
}

// cacheEntries is the number of tokens in v's verified-token cache.
func cacheEntries(v *verifier) int {
	v.cacheMu.Lock()
	defer v.cacheMu.Unlock()
	return len(v.cache)
}

// TestAttackWSLiveLimit: a WebSocket's live subscriptions count toward
// MaxLivePerUser with the connection itself, so one connection cannot
// hold more live polls than the limit allows an HTTP client.
func TestAttackWSLiveLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Limits.MaxLivePerUser = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok := token(t, "alice", nil)
	c := rawWS(t, ctx, e)
	defer c.CloseNow()
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": tok})
	if f := readFrame(t, ctx, c); f.Type != "auth_ok" {
		t.Fatalf("auth: %+v", f)
	}
	// The connection holds one slot: two live subscriptions fit, a third
	// does not, whatever its shape.
	status := map[string]int{}
	for _, sub := range []struct{ id, shape string }{{"a", "news"}, {"b", "items"}, {"c", "mine"}, {"d", "news"}} {
		writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": sub.id, "shape": sub.shape})
	}
	deadline := time.Now().Add(10 * time.Second)
	for (status["c"] == 0 || status["d"] == 0) && time.Now().Before(deadline) {
		f := readFrame(t, ctx, c)
		if f.Type == "error" {
			status[f.ID] = f.Status
		}
	}
	if status["a"] != 0 || status["b"] != 0 || status["c"] != 429 || status["d"] != 429 {
		t.Fatalf("subscriptions beyond the live limit: %v", status)
	}
	// A subscription that is not live holds no slot.
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "once", "shape": "news", "live": false})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool {
		if f.ID == "once" && f.Type == "error" {
			t.Fatalf("a non-live subscription refused: %+v", f)
		}
		return f.ID == "once" && f.Type == "done"
	})
	// Nor can an HTTP live poll of the same user take more.
	off, handle, _ := e.initial("news", tok)
	resp := e.do("GET", e.url+"/v1/shapes/news?offset="+off+"&handle="+handle+"&live=true", tok, nil)
	if body := readBody(t, resp); resp.StatusCode != 429 {
		t.Errorf("HTTP live poll next to the WebSocket: %d %s", resp.StatusCode, body)
	}
	// Unsubscribing gives the slot back.
	writeWS(t, ctx, c, map[string]any{"type": "unsubscribe", "id": "a"})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.ID == "a" && f.Type == "done" })
	for i := 0; ; i++ {
		id := "e" + strconv.Itoa(i)
		writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": id, "shape": "news"})
		f := readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.ID == id })
		if f.Type == "messages" {
			break
		}
		if f.Status != 429 || i == 20 {
			t.Fatalf("after unsubscribe: %+v", f)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAttackHealthzUpstream: anonymous /healthz requests, however many,
// make at most one upstream health request a second.
func TestAttackHealthzUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	start := time.Now()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			resp, err := http.Get(e.url + "/healthz")
			if err != nil {
				t.Error(err)
				return
			}
			if body := readBody(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "active") {
				t.Errorf("healthz: %d %s", resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	for range 30 {
		resp := e.do("GET", e.url+"/healthz", "", nil)
		readBody(t, resp)
	}
	n := int(e.rec.health.Load())
	if max := int(time.Since(start)/time.Second) + 1; n < 1 || n > max {
		t.Fatalf("50 health checks made %d upstream requests in %v", n, time.Since(start))
	}
	time.Sleep(healthTTL + 100*time.Millisecond)
	resp := e.do("GET", e.url+"/healthz", "", nil)
	readBody(t, resp)
	if got := int(e.rec.health.Load()); got != n+1 {
		t.Fatalf("after the cached answer expired: %d upstream requests, want %d", got, n+1)
	}
}

// TestAttackServerHeaders: the upstream names itself (electric-server:
// software and version); the proxy's responses never carry it, whether
// streamed, shared between coalesced polls or written by a parked poll.
func TestAttackServerHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	tok := token(t, "alice", nil)
	up, err := http.Get(e.upURL + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, up)
	if up.Header.Get("Electric-Server") == "" {
		t.Fatal("the upstream sends no electric-server header: the test is wrong")
	}
	check := func(what string, h http.Header) {
		t.Helper()
		for _, k := range []string{"Electric-Server", "Server", "Via", "X-Powered-By"} {
			if v := h.Get(k); v != "" {
				t.Errorf("%s: %s: %s", what, k, v)
			}
		}
	}
	off, handle, resp := e.initial("news", tok)
	check("initial GET", resp.Header)
	resp = e.do("HEAD", e.url+"/v1/shapes/news?offset=-1", tok, nil)
	readBody(t, resp)
	check("HEAD", resp.Header)
	// Live polls: coalesced on a plain server, parked with Serve.
	parkURL, _ := parkServer(t, e.p)
	q := "/v1/shapes/news?offset=" + off + "&handle=" + handle + "&live=true"
	plain := livePoll(testCtx(t), http.DefaultClient, e.url+q, tok, nil)
	parked := livePoll(testCtx(t), &http.Client{Transport: &http.Transport{}}, parkURL+q, tok, nil)
	time.Sleep(300 * time.Millisecond) // past parkAfter
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (2,'news')`)
	for what, ch := range map[string]<-chan polled{"coalesced live poll": plain, "parked live poll": parked} {
		r := <-ch
		if r.err != nil || r.resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", what, r.err, r.resp)
		}
		check(what, r.resp.Header)
	}
}

// testCtx is a context for t, with a deadline.
func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
