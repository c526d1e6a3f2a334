package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/internal/proxycmd"
)

const (
	proxyTestJWTSecret = "a-test-hs256-secret-of-32-bytes!!"
	proxyTestUpSecret  = "electric-upstream-secret"
)

// signHS256 signs claims as a compact JWS with HS256, as an identity
// provider would (kid "app", as in proxy/testdata/example.yaml).
func signHS256(t testing.TB, secret string, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT", "kid": "app"})
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func exampleClaims(user string, tenants ...string) map[string]any {
	now := time.Now().Unix()
	return map[string]any{"sub": user, "iss": "https://issuer.example/", "aud": "shapeseal",
		"iat": now, "nbf": now, "exp": now + 600, "roles": []string{"reader"}, "tenant_ids": tenants}
}

// startProxyCommand runs `shapeseal proxy --config proxy/testdata/example.yaml
// --listen 127.0.0.1:0` in-process against upstream (with the secrets in
// the environment it is given) and returns the proxy URL from its ready
// line and a stop function that interrupts it and reports its error.
func startProxyCommand(t *testing.T, upstream string) (proxyURL string, stop func() error) {
	t.Helper()
	env := map[string]string{"ELECTRIC_URL": upstream, "ELECTRIC_SECRET": proxyTestUpSecret, "JWT_SECRET": proxyTestJWTSecret}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	config := filepath.Join("..", "..", "proxy", "testdata", "example.yaml")
	go func() {
		errc <- proxycmd.Run(ctx, []string{"--config", config, "--listen", "127.0.0.1:0"}, pw, os.Stderr, func(k string) string { return env[k] })
		pw.Close()
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "shapeseal proxy ready "); ok {
				ready <- s
			}
		}
		close(ready)
	}()
	var line string
	select {
	case line = <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("shapeseal proxy: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("no ready line")
	}
	var info struct {
		ProxyURL string `json:"proxy_url"`
	}
	if err := json.Unmarshal([]byte(line), &info); err != nil || !strings.HasPrefix(info.ProxyURL, "http://127.0.0.1:") {
		cancel()
		t.Fatalf("ready line %q: %v", line, err)
	}
	var stopped bool
	var stopErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case stopErr = <-errc:
			case <-time.After(15 * time.Second):
				stopErr = context.DeadlineExceeded
			}
		}
		return stopErr
	}
	t.Cleanup(func() { stop() })
	return info.ProxyURL, stop
}

func TestProxyCommand(t *testing.T) {
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text, note text)`)
	pgtest.Exec(t, db, `INSERT INTO items VALUES (1,'acme','a1','n1'),(2,'acme','a2','n2'),(3,'globex','g1','n3')`)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db, Secret: proxyTestUpSecret, LongPollTimeout: 500 * time.Millisecond})
	proxyURL, stop := startProxyCommand(t, srv.URL)

	if code, _, body := proxyGet(t, proxyURL, "/healthz", ""); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, h, _ := proxyGet(t, proxyURL, "/v1/shapes/items?offset=-1", ""); code != 401 || h.Get("WWW-Authenticate") == "" {
		t.Errorf("no token: %d %v", code, h)
	}
	tok := signHS256(t, proxyTestJWTSecret, exampleClaims("alice", "acme"))
	if code, _, _ := proxyGet(t, proxyURL, "/v1/shapes/items?offset=-1&table=items", tok); code != 400 {
		t.Errorf("table param: %d, want 400", code)
	}
	if code, _, _ := proxyGet(t, proxyURL, "/v1/shapes/items?offset=-1", signHS256(t, "another-secret-another-secret-!!", exampleClaims("alice", "acme"))); code != 401 {
		t.Errorf("wrong key: %d, want 401", code)
	}
	code, h, body := proxyGet(t, proxyURL, "/v1/shapes/items?offset=-1", tok)
	if code != 200 || h.Get("electric-handle") == "" {
		t.Fatalf("items: %d %v %s", code, h, body)
	}
	checkAcmeItems(t, body)
	if strings.Contains(body, proxyTestUpSecret) || strings.Contains(h.Get("Location"), proxyTestUpSecret) {
		t.Error("the Electric secret leaked")
	}
	if code, _, body := proxyGet(t, proxyURL, "/metrics", ""); code != 200 || !strings.Contains(body, "items") {
		t.Errorf("/metrics: %d", code)
	}

	// A live poll in flight does not keep the command from stopping.
	liveDone := make(chan struct{})
	go func() {
		defer close(liveDone)
		req, _ := http.NewRequest("GET", proxyURL+"/v1/shapes/items?live=true&offset="+h.Get("electric-offset")+"&handle="+h.Get("electric-handle"), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("shapeseal proxy stopped with %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	<-liveDone
}

// proxyGet GETs path of the proxy at proxyURL, with the bearer token tok
// if any.
func proxyGet(t *testing.T, proxyURL, path, tok string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", proxyURL+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// checkAcmeItems checks that a shape response holds acme's items 1 and 2,
// without their note.
func checkAcmeItems(t *testing.T, body string) {
	t.Helper()
	var msgs []struct {
		Value map[string]any `json:"value"`
	}
	if err := json.Unmarshal([]byte(body), &msgs); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		if m.Value == nil {
			continue
		}
		if m.Value["tenant_id"] != "acme" || m.Value["note"] != nil {
			t.Errorf("row outside the rule: %v", m.Value)
		}
		ids = append(ids, m.Value["id"].(string))
	}
	if strings.Join(ids, ",") != "1,2" {
		t.Errorf("ids %v, want 1,2", ids)
	}
}
