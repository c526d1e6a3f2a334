package proxy

import (
	"cmp"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgident"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// logRule serves the logs of the token's tenants, as `shapeseal dev`
// does: the where is pinned to the tenants claim, as for the tenants' data.
var logRule = ShapeRule{
	Name:    "log",
	Table:   keysync.LogTable,
	Where:   keysync.LogShapeWhere,
	Params:  []string{"$tenants"},
	Columns: []string{"tenant_id", "seq", "entry"},
	Replica: "full",
}

// TestKeyringThroughProxy: keysync's Keyring follows the tenant_keys shape
// and the tenant logs through the proxy, unchanged, receives live grants,
// and never sees a key row of another user or device; and a token cannot
// read, through the log rule, the logs of tenants it does not list.
func TestKeyringThroughProxy(t *testing.T) {
	t.Parallel()
	e := newEnvSQL(t, keysync.Schema()+`
CREATE TABLE items (id int PRIMARY KEY, tenant_id text NOT NULL, owner text, title text, note text);
CREATE TABLE public_news (id int PRIMARY KEY, body text);`, func(c *Config) { c.Shapes = append(c.Shapes, logRule) })
	checkLogUpstream(t, e)

	// An Admin with a root key creates the tenants, certifies the devices
	// and grants: every grant is a signed entry of the tenant's log.
	ctx := context.Background()
	k := newProxyAdmin(t, e, "acme", "globex")
	alice, _ := keysync.GenerateIdentity()
	alicePhone, _ := keysync.GenerateIdentity()
	bob, _ := keysync.GenerateIdentity()
	k.certify(ctx, "alice", "laptop", alice)
	k.certify(ctx, "alice", "phone", alicePhone) // same user, other device: its key row is filtered out
	k.certify(ctx, "bob", "pc", bob)
	k.grant(ctx, "acme", "alice") // wraps to alice's laptop and phone
	k.grant(ctx, "globex", "bob") // another user

	aliceToken := client.StaticToken(token(t, "alice", map[string]any{"device_id": "laptop", "tenant_ids": []string{"acme", "globex"}}))
	ring, refused, stop := k.startRing(aliceToken, alice)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := ring.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if ring.Keyset("acme") == nil || ring.Tenants() != 1 {
		t.Fatalf("keyring holds %d tenants", ring.Tenants())
	}
	// A live grant arrives through the proxy: globex's key row on the key
	// shape, and on the log shape globex's entry that adds alice.
	k.grant(ctx, "globex", "alice")
	if _, err := ring.Wait(ctx, "globex", func(ks *keysync.Keyset) bool { return ks != nil }); err != nil {
		t.Fatalf("live grant not received: %v", err)
	}
	for _, r := range refused() {
		// The two shapes are separate streams, so globex's key row may
		// arrive before its log does: that is reported, not adopted. Any
		// other refusal means a row or log reached the ring that should not.
		if r.Key != "" || r.Tenant != "globex" || !errors.Is(r, chain.ErrNoLog) && !errors.Is(r, keysync.ErrNotMember) {
			t.Errorf("refused (another device's key, or a log that does not verify, reached the ring): %v", r)
		}
	}
	k.checkBobLog(ctx)
}

// proxyAdmin is an Admin with a root key over the proxy env's database,
// which writes the tenants' logs and keys for TestKeyringThroughProxy.
type proxyAdmin struct {
	t     *testing.T
	e     *env
	admin *keysync.Admin
	roots []keysync.VerifyKey
}

// newProxyAdmin connects to e's database, makes a KEK and a root key, and
// creates the tenants.
func newProxyAdmin(t *testing.T, e *env, tenants ...string) *proxyAdmin {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	kek, err := keysync.GenerateLocalKEK(filepath.Join(t.TempDir(), "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	root, err := chain.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	roots := []keysync.VerifyKey{root.Public()}
	admin := &keysync.Admin{DB: pool, Roots: roots, Key: root, KEKs: keysync.UseKEK(kek)}
	for _, tenant := range tenants {
		if _, err := admin.CreateTenant(ctx, kek, tenant); err != nil {
			t.Fatal(err)
		}
	}
	return &proxyAdmin{t: t, e: e, admin: admin, roots: roots}
}

// certify certifies id as the user's device.
func (k *proxyAdmin) certify(ctx context.Context, user, device string, id age.Identity) {
	k.t.Helper()
	rcpt, err := keysync.RecipientOf(id)
	if err != nil {
		k.t.Fatal(err)
	}
	if err := k.admin.CertifyDevice(ctx, user, device, rcpt); err != nil {
		k.t.Fatal(err)
	}
}

// grant adds the user to the tenant.
func (k *proxyAdmin) grant(ctx context.Context, tenant, user string) {
	k.t.Helper()
	if _, err := k.admin.Grant(ctx, tenant, user); err != nil {
		k.t.Fatal(err)
	}
}

// startRing runs a live Keyring for id following the key and log shapes
// through the proxy with tok. refused returns the key rows it refused so
// far; stop closes it and checks Run's error.
func (k *proxyAdmin) startRing(tok client.TokenSource, id age.Identity) (ring *keysync.Keyring, refused func() []*keysync.KeyRowError, stop func()) {
	t := k.t
	t.Helper()
	var mu sync.Mutex
	var rows []*keysync.KeyRowError
	ring, err := keysync.NewKeyring(keysync.KeyringOptions{
		Stream:   client.Options{URL: k.e.url + "/v1/shapes/keys", Live: true, TokenSource: tok},
		Log:      client.Options{URL: k.e.url + "/v1/shapes/log", Live: true, TokenSource: tok},
		Identity: id,
		Roots:    k.roots,
		Floor:    keysync.NewMemoryFloor(),
		OnRowError: func(e *keysync.KeyRowError) {
			mu.Lock()
			rows = append(rows, e)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ring.Run(context.Background()) }()
	refused = func() []*keysync.KeyRowError {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(rows)
	}
	stop = func() {
		ring.Close()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return ring, refused, stop
}

// checkBobLog: bob's token lists globex: he reads globex's log, every
// entry of it, and nothing of acme's. The rule's where is pinned to the
// token's tenants. Nor can he widen the rule: a where or a parameter of
// his own is refused, never forwarded.
func (k *proxyAdmin) checkBobLog(ctx context.Context) {
	t, e := k.t, k.e
	t.Helper()
	bobToken := token(t, "bob", map[string]any{"device_id": "pc", "tenant_ids": []string{"globex"}})
	globex, err := k.admin.State(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	got := readLog(t, ctx, e.url+"/v1/shapes/log", bobToken)
	var want []string
	for seq := uint64(1); seq <= globex.Seq(); seq++ {
		want = append(want, "globex/"+strconv.FormatUint(seq, 10))
	}
	if !slices.Equal(got, want) {
		t.Errorf("bob reads the log entries %v, want %v (globex's only)", got, want)
	}
	for _, q := range []string{"&params[1]={acme}", "&params%5B1%5D={acme}", "&where=true", "&table=shapeseal_log"} {
		resp := e.do("GET", e.url+"/v1/shapes/log?offset=-1"+q, bobToken, nil)
		if body := readBody(t, resp); resp.StatusCode != 400 {
			t.Errorf("log rule with %s: %d %s, want 400", q, resp.StatusCode, body)
		}
	}
}

// readLog reads the log shape at url with tok up to date and returns its
// rows as "tenant/seq", in order.
func readLog(t *testing.T, ctx context.Context, url, tok string) []string {
	t.Helper()
	s, err := client.New(client.Options{URL: url, TokenSource: client.StaticToken(tok)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type pos struct {
		tenant string
		seq    uint64
	}
	var rows []pos
	for m, err := range s.Messages(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			tenant, _ := m.Value["tenant_id"].(string)
			seq, _ := m.Value["seq"].(string)
			n, err := strconv.ParseUint(seq, 10, 64)
			if err != nil {
				t.Fatalf("log row %v: seq: %v", m.Value, err)
			}
			rows = append(rows, pos{tenant, n})
		}
	}
	slices.SortFunc(rows, func(a, b pos) int { return cmp.Or(cmp.Compare(a.tenant, b.tenant), cmp.Compare(a.seq, b.seq)) })
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.tenant + "/" + strconv.FormatUint(r.seq, 10)
	}
	return out
}

// checkLogUpstream checks, when the test ends, that every upstream request
// of the log rule stayed inside it — table, where, one parameter with a
// token's tenants, the rule's columns, the secret — and takes those
// requests out of the recorder, whose own check (checkPinned) knows the
// other rules only.
func checkLogUpstream(t *testing.T, e *env) {
	t.Cleanup(func() {
		allowed := map[string]bool{"offset": true, "handle": true, "live": true, "cursor": true, "live_sse": true,
			"experimental_live_sse": true, "expired_handle": true, "cache-buster": true, "log": true,
			"table": true, "where": true, "params[1]": true, "columns": true, "replica": true, "secret": true}
		e.rec.mu.Lock()
		defer e.rec.mu.Unlock()
		kept := e.rec.reqs[:0]
		for _, q := range e.rec.reqs {
			if q.Get("table") != keysync.LogTable {
				kept = append(kept, q)
				continue
			}
			for k, v := range q {
				if !allowed[k] || len(v) != 1 {
					t.Errorf("log rule: upstream parameter %s=%q outside the rule: %v", k, v, q)
				}
			}
			if q.Get("where") != keysync.LogShapeWhere || q.Get("secret") != upSecret ||
				!slices.Contains([]string{pgident.TextArray([]string{"acme", "globex"}), pgident.TextArray([]string{"globex"})}, q.Get("params[1]")) ||
				q.Get("columns") != `"tenant_id","seq","entry"` || q.Get("replica") != "full" {
				t.Errorf("log rule: upstream request outside the rule: %v", q)
			}
		}
		e.rec.reqs = kept
	})
}
