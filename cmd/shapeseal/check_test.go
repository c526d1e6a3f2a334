package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/proxy"
)

// checkRun runs `shapeseal check` with the environment env only.
func checkRun(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runCheck(t.Context(), args, &out, &errOut, func(k string) string { return env[k] })
	return code, out.String(), errOut.String()
}

// checkJSON runs `shapeseal check --json` and returns its rows by name.
func checkJSON(t *testing.T, env map[string]string, args ...string) (int, map[string]checkRow) {
	t.Helper()
	code, out, errOut := checkRun(t, env, append(args, "--json")...)
	var rows []checkRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("--json output %q (stderr %q): %v", out, errOut, err)
	}
	byName := map[string]checkRow{}
	for _, r := range rows {
		byName[r.Row] = r
	}
	if len(rows) != 9 || len(byName) != 9 {
		t.Fatalf("%d rows, want 9 distinct: %+v", len(rows), rows)
	}
	return code, byName
}

func checkRandHex(t *testing.T) string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// line returns the line of out about row.
func checkLine(t *testing.T, out, row string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[1] == row+":" {
			return l
		}
	}
	t.Fatalf("no %s line in:\n%s", row, out)
	return ""
}

// TestCheckNoSecret: an Electric that serves shapes without a secret, as
// `shapeseal devserver` does by default, fails the electric-secret row.
func TestCheckNoSecret(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, `CREATE TABLE items (id int8 PRIMARY KEY, title text)`)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db})

	// The probe of a real table: 200.
	code, out, errOut := checkRun(t, nil, "--electric-url", srv.URL, "--database-url", db, "--table", "items")
	t.Logf("shapeseal check:\n%s", out)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	if l := checkLine(t, out, "electric-secret"); !strings.HasPrefix(l, "FAIL ") || !strings.Contains(l, "Electric serves shapes without a secret: set ELECTRIC_SECRET") {
		t.Errorf("electric-secret line %q", l)
	}
	if l := checkLine(t, out, "health"); !strings.HasPrefix(l, "ok   ") {
		t.Errorf("health line %q", l)
	}
	// The default probe (a table that does not exist): 400, not 401.
	code, rows := checkJSON(t, nil, "--electric-url", srv.URL)
	if r := rows["electric-secret"]; code != 1 || r.Status != "FAIL" || !strings.Contains(r.Detail, "answered 400, not 401") {
		t.Errorf("exit %d, electric-secret %+v", code, r)
	}
	if r := rows["publication"]; r.Status != "skip" {
		t.Errorf("without a database: publication %+v", r)
	}
}

// TestCheckProduction: a stack as the checklist wants it passes every row.
func TestCheckProduction(t *testing.T) {
	t.Parallel()
	cp := newCheckProduction(t)
	db, role, secret, env, proxyURL := cp.db, cp.role, cp.secret, cp.env, cp.proxyURL

	args := []string{"--proxy-config", cp.config, "--proxy-url", proxyURL, "--database-url", db,
		"--electric-role", role, "--publication", "electric_publication_default", "--behind-tls"}
	code, out, errOut := checkRun(t, env, args...)
	t.Logf("shapeseal check:\n%s", out)
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	checkProductionText(t, out, secret, env["JWT_SECRET"], errOut)

	code, rows := checkJSON(t, env, args...)
	for _, r := range rows {
		if r.Status != "ok" || r.Detail == "" {
			t.Errorf("--json: %+v", r)
		}
	}
	if code != 0 {
		t.Errorf("--json: exit %d", code)
	}

	// A wrong secret: Electric refuses it.
	code, rows = checkJSON(t, env, append(args, "--electric-secret", "not-"+secret)...)
	if r := rows["electric-secret"]; code != 1 || r.Status != "FAIL" || strings.Contains(r.Detail, secret) {
		t.Errorf("wrong secret: exit %d, %+v", code, r)
	}
	// The superuser the tests connect as is no role for Electric, and plain
	// http needs --behind-tls.
	code, rows = checkJSON(t, env, "--proxy-url", proxyURL, "--database-url", db, "--publication", "electric_publication_default")
	if r := rows["electric-role"]; code != 1 || r.Status != "FAIL" || !strings.Contains(r.Detail, "superuser") {
		t.Errorf("superuser role: exit %d, %+v", code, r)
	}
	if r := rows["tls"]; r.Status != "skip" || !strings.Contains(r.Detail, "loopback") {
		t.Errorf("http proxy URL on loopback: %+v", r)
	}
	// A role that may write the published tables.
	writer := "electric_rw_" + checkRandHex(t)
	pgtest.Exec(t, db, `CREATE ROLE `+writer+` NOLOGIN; GRANT SELECT, INSERT ON items TO `+writer)
	t.Cleanup(func() { pgtest.Exec(t, db, `DROP OWNED BY `+writer+`; DROP ROLE `+writer) })
	_, rows = checkJSON(t, env, "--database-url", db, "--electric-role", writer, "--publication", "electric_publication_default")
	if r := rows["electric-role"]; r.Status != "FAIL" || !strings.Contains(r.Detail, "INSERT on public.items") {
		t.Errorf("writer role: %+v", r)
	}
}

// checkProduction is a production-like setup for check: a database with
// shapeseal's tables, a publication and a read-only replication role for
// Electric, an Electric with a secret, and a proxy of example.yaml.
type checkProduction struct {
	db, role, secret string
	env              map[string]string
	config           string // the proxy's configuration file
	proxyURL         string
}

func newCheckProduction(t *testing.T) checkProduction {
	t.Helper()
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text)`)
	pgtest.Exec(t, db, keysync.Schema())
	// Roles are the cluster's: a name of this test's own.
	role := "electric_ro_" + checkRandHex(t)
	pgtest.Exec(t, db, `CREATE ROLE `+role+` NOLOGIN REPLICATION;
		GRANT SELECT ON items, shapeseal_tenant_keys, shapeseal_log TO `+role+`;
		CREATE PUBLICATION electric_publication_default FOR TABLE items, shapeseal_tenant_keys, shapeseal_log`)
	t.Cleanup(func() { pgtest.Exec(t, db, `DROP OWNED BY `+role+`; DROP ROLE `+role) })

	secret := "electric-secret-" + checkRandHex(t)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db, Secret: secret})
	env := map[string]string{
		"ELECTRIC_URL":    srv.URL,
		"ELECTRIC_SECRET": secret,
		"JWT_SECRET":      "jwt-secret-of-at-least-32-bytes-" + checkRandHex(t),
	}
	const config = "../../proxy/testdata/example.yaml"
	cfg, err := proxy.LoadConfig(config, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	px, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(px)
	t.Cleanup(ps.Close)
	return checkProduction{db: db, role: role, secret: secret, env: env, config: config, proxyURL: ps.URL}
}

// checkProductionText checks check's text output: every line ok, none
// showing a secret, details aligned, and nothing on stderr.
func checkProductionText(t *testing.T, out, secret, jwtSecret, errOut string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 9 {
		t.Errorf("%d lines, want 9", len(lines))
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "ok   ") {
			t.Errorf("not ok: %s", l)
		}
	}
	if strings.Contains(out, secret) || strings.Contains(out, jwtSecret) || errOut != "" {
		t.Errorf("output shows a secret, or stderr %q", errOut)
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
	// The detail column starts at the same place on every line.
	col := len("ok   electric-not-public: ")
	for _, l := range lines {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("not aligned:\n%s", out)
			break
		}
	}
}

// TestCheckPublicationAllTables: a FOR ALL TABLES publication fails, and so
// does one without the key tables.
func TestCheckPublicationAllTables(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, keysync.Schema())
	pgtest.Exec(t, db, `CREATE TABLE items (id int8 PRIMARY KEY);
		CREATE PUBLICATION electric_all FOR ALL TABLES;
		CREATE PUBLICATION electric_items FOR TABLE items`)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db, Secret: "electric-secret"})
	args := []string{"--electric-url", srv.URL, "--electric-secret", "electric-secret", "--database-url", db}

	code, rows := checkJSON(t, nil, append(args, "--publication", "electric_all")...)
	if r := rows["publication"]; code != 1 || r.Status != "FAIL" || !strings.Contains(r.Detail, "electric_all is FOR ALL TABLES") {
		t.Errorf("exit %d, publication %+v", code, r)
	}
	if r := rows["electric-secret"]; r.Status != "ok" {
		t.Errorf("electric-secret %+v", r)
	}
	_, rows = checkJSON(t, nil, append(args, "--publication", "electric_items")...)
	if r := rows["publication"]; r.Status != "ok" || !strings.Contains(r.Detail, "does not publish shapeseal_tenant_keys, shapeseal_log yet") {
		t.Errorf("publication without the key tables: %+v", r)
	}
	_, rows = checkJSON(t, nil, append(args, "--publication", "electric_nope")...)
	if r := rows["publication"]; r.Status != "FAIL" || !strings.Contains(r.Detail, "no publication electric_nope") {
		t.Errorf("missing publication: %+v", r)
	}
	// By default every electric* publication (electrictest's own too).
	_, rows = checkJSON(t, nil, args...)
	if r := rows["publication"]; r.Status != "FAIL" || !strings.Contains(r.Detail, "electric_all is FOR ALL TABLES") {
		t.Errorf("default publications: %+v", r)
	}
}

// TestCheckProxyConfigRows: the rows read from a proxy config that the
// checklist would not pass. Electric is not running: those rows fail.
func TestCheckProxyConfigRows(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "proxy.yaml")
	err := os.WriteFile(path, []byte(`upstream: http://127.0.0.1:1
auth:
  algorithms: [HS256]
  hmac_keys: [{kid: app, secret_env: APP_JWT_SECRET}]
  leeway: 1h
shapes:
  - {name: items, table: items, where: "tenant_id = ANY($1::text[])", params: [$tenants]}
  - {name: everything, table: items}
  - {name: news, table: news, where: "published"}
  - {name: keys, kind: tenant_keys}
limits: {requests_per_second: -1, max_live_per_user: -1}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// APP_JWT_SECRET is not set: the config is checked all the same.
	code, rows := checkJSON(t, nil, "--proxy-config", path, "--proxy-url", "http://127.0.0.1:1")
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	want := map[string]string{
		"where-pinned":        "rule everything (table items) has no where",
		"tokens":              "auth.leeway 1h0m0s",
		"rate-limits":         "limits.requests_per_second, limits.max_live_per_user negative",
		"electric-not-public": "is at the proxy's address",
		"health":              "did not answer",
	}
	for row, detail := range want {
		if r := rows[row]; r.Status != "FAIL" || !strings.Contains(r.Detail, detail) {
			t.Errorf("%s: %+v, want FAIL with %q", row, r, detail)
		}
	}
	if d := rows["tokens"].Detail; !strings.Contains(d, "auth.issuer") || !strings.Contains(d, "auth.audience") {
		t.Errorf("tokens: %s", d)
	}
	for _, row := range []string{"electric-secret", "electric-role", "publication"} {
		if r := rows[row]; r.Status != "skip" {
			t.Errorf("%s: %+v, want skip", row, r)
		}
	}
	// Without the bad rules, where-pinned names the fixed one.
	cfg := strings.Replace(string(checkMust(os.ReadFile(path))), "  - {name: everything, table: items}\n", "", 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, rows = checkJSON(t, nil, "--proxy-config", path)
	if r := rows["where-pinned"]; r.Status != "ok" || !strings.Contains(r.Detail, "2 of 3 rules pinned") || !strings.Contains(r.Detail, "news") {
		t.Errorf("where-pinned %+v", r)
	}
	if r := rows["tls"]; r.Status != "skip" {
		t.Errorf("tls without a proxy URL: %+v", r)
	}
}

func checkMust[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestCheckElectricAddress: the electric-not-public row on addresses it
// can see without the network.
func TestCheckElectricAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ electric, proxy, status string }{
		{"http://127.0.0.1:3000", "https://127.0.0.1:3001", "ok"},
		{"http://localhost:3000", "http://[::1]:3000", "FAIL"},
		{"http://10.0.0.5:3000", "https://api.example", "ok"},
		{"http://100.64.1.2:3000", "", "ok"},
		{"http://8.8.8.8:3000", "https://api.example", "FAIL"},
		{"http://[2001:4860::8888]:3000", "", "FAIL"},
		{"http://shapeseal-check.invalid:3000", "", "skip"},
	} {
		c := &checker{electric: checkMust(parseCheckURL(tc.electric))}
		if tc.proxy != "" {
			c.proxyURL = checkMust(parseCheckURL(tc.proxy))
		}
		ctx, cancel := context.WithTimeout(t.Context(), checkTimeout)
		r := c.checkNotPublic(ctx)
		cancel()
		if r.status != tc.status {
			t.Errorf("electric %s, proxy %q: %s %s, want %s", tc.electric, tc.proxy, r.status, r.detail, tc.status)
		}
	}
}

// TestCheckUsage: misuse exits 2, --help 0.
func TestCheckUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{},                                  // no Electric URL
		{"--electric-url", "ftp://x"},       // not http
		{"--electric-url", "http://x", "y"}, // an argument
		{"--nope"},
		{"--electric-url", "http://x", "--proxy-config", filepath.Join(t.TempDir(), "missing.yaml")},
	} {
		start := time.Now()
		code, out, errOut := checkRun(t, nil, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "shapeseal check: ") || time.Since(start) > time.Second {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	code, out, _ := checkRun(t, nil, "--help")
	if code != 0 || !strings.Contains(out, "usage: shapeseal check --electric-url URL") || !strings.Contains(out, "-behind-tls") {
		t.Errorf("--help: exit %d, %q", code, out)
	}
	// The database URL's password is never printed.
	u := url.URL{Scheme: "postgres", User: url.UserPassword("u", "pg-password-xyz"), Host: "127.0.0.1:1", Path: "db"}
	_, out, _ = checkRun(t, nil, "--electric-url", "http://127.0.0.1:1", "--database-url", u.String())
	if strings.Contains(out, "pg-password-xyz") || !strings.Contains(out, "electric-role") {
		t.Errorf("output:\n%s", out)
	}
}

// TestCheckTLS: a plain-http proxy URL fails unless it is loopback only
// (skipped) or TLS terminates in front of it.
func TestCheckTLS(t *testing.T) {
	for _, c := range []struct {
		url       string
		behindTLS bool
		want      string
	}{
		{"http://proxy.example:8080", false, "FAIL"},
		{"http://10.0.0.5", false, "FAIL"},
		{"http://127.0.0.1:3000", false, "skip"},
		{"http://localhost:3000", false, "skip"},
		{"https://proxy.example", false, "ok"},
		{"http://proxy.example", true, "ok"},
	} {
		u, _ := url.Parse(c.url)
		ch := &checker{proxyURL: u, behindTLS: c.behindTLS}
		if r := ch.checkTLS(context.Background()); r.status != c.want {
			t.Errorf("%s (behind TLS %v): %+v, want %s", c.url, c.behindTLS, r, c.want)
		}
	}
}
