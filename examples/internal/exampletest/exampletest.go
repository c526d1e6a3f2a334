// Package exampletest builds, inside a test, the stack that
// `go run ./cmd/shapeseal dev` runs, so that the tests of the examples run
// them end to end against real parts: a fresh Postgres database (through
// internal/pgtest) with shapeseal's schema and dev's "items" table, a local
// KEK and its signer, and on demand electrictest behind the key-sync proxy,
// with HS256 tokens minted here as dev mints them.
//
// It is test support for the examples only; the examples themselves take
// everything from flags and the environment.
package exampletest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/proxy"
)

// Items is dev's demo table, which the examples read and write.
const Items = `CREATE TABLE items (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id text NOT NULL,
	title text,
	body text,
	created_at timestamptz NOT NULL DEFAULT now()
)`

// ItemsSpec says how items is encrypted, as in dev.
var ItemsSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

const issuer = "shapeseal-example"

// An Env is one test's stack.
type Env struct {
	DatabaseURL string
	KEKURI      string // local:///…/kek.json
	KEK         keysync.KEK
	Signer      string // the signer's verify key, ssvk1…, which devices trust
	Dir         string // holds the KEK and identity files

	// ProxyURL is set by StartProxy.
	ProxyURL string
	jwtKey   []byte
}

// New creates a database with shapeseal's schema and the items table, a
// local KEK and the signer stored under it.
func New(t testing.TB) *Env {
	t.Helper()
	e := &Env{DatabaseURL: pgtest.NewDB(t), Dir: t.TempDir()}
	pgtest.Exec(t, e.DatabaseURL, keysync.Schema())
	pgtest.Exec(t, e.DatabaseURL, Items)
	path := filepath.Join(e.Dir, "kek.json")
	kek, err := keysync.GenerateLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	e.KEK, e.KEKURI = kek, keysync.LocalKEKScheme+path
	conn := e.Conn(t)
	signer, err := keysync.EnsureSigner(t.Context(), conn, kek)
	if err != nil {
		t.Fatal(err)
	}
	e.Signer = signer.VerifyKey().String()
	return e
}

// Conn returns a connection to the database, closed when the test ends.
func (e *Env) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), e.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// StartProxy starts electrictest on the database and, in front of it, the
// proxy with dev's two rules: "items" (rows of the token's tenant_ids) and
// "keys" (the token's user's and device's wrapped tenant keys).
func (e *Env) StartProxy(t testing.TB) {
	t.Helper()
	secret := rand.Text()
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: e.DatabaseURL, Secret: secret})
	e.jwtKey = make([]byte, 32)
	rand.Read(e.jwtKey)
	px, err := proxy.New(proxy.Config{
		Upstream: srv.URL,
		Secret:   secret,
		Auth: proxy.AuthConfig{
			Algorithms: []string{"HS256"},
			HMACKeys:   []proxy.HMACKey{{Secret: e.jwtKey}},
			Issuer:     issuer,
		},
		Shapes: []proxy.ShapeRule{
			{Name: "items", Table: "items", Where: "tenant_id = ANY($1::text[])", Params: []string{"$tenants"}},
			{Name: "keys", Kind: proxy.KindTenantKeys},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(px)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
	})
	e.ProxyURL = hs.URL
}

// Token mints a token the proxy accepts for user's device, allowed to read
// the rows of tenants.
func (e *Env) Token(user, device string, tenants ...string) string {
	if e.jwtKey == nil {
		panic("exampletest: Token before StartProxy")
	}
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"iss": issuer, "sub": user, "device_id": device, "tenant_ids": tenants,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, e.jwtKey)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

// Identity writes a new device identity for user to a 0600 file and returns
// its path. The device is not registered: that is the examples' business
// (or Device's).
func (e *Env) Identity(t testing.TB, user string) string {
	t.Helper()
	id, err := keysync.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.Dir, user+".age")
	if err := keysync.WriteIdentityFile(path, id); err != nil {
		t.Fatal(err)
	}
	return path
}

// Member gives user a device with a new identity, makes them a member of
// tenants (creating the tenants that do not exist yet) and returns the
// identity file's path.
func (e *Env) Member(t testing.TB, user, device string, tenants ...string) string {
	t.Helper()
	path := e.Identity(t, user)
	id, err := keysync.LoadIdentityFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rcpt, err := keysync.RecipientOf(id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, conn := t.Context(), e.Conn(t)
	if err := keysync.AddDevice(ctx, conn, user, device, rcpt); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range tenants {
		if _, err := keysync.CreateTenant(ctx, conn, e.KEK, tenant); err != nil && !errors.Is(err, keysync.ErrGenerationExists) {
			t.Fatal(err)
		}
		if _, err := keysync.Grant(ctx, conn, e.KEK, tenant, user); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// WriteItem writes an encrypted item with keysync.Writer and returns its id.
func (e *Env) WriteItem(t testing.TB, tenant, title, body string) string {
	t.Helper()
	w, err := keysync.NewWriter(ItemsSpec, keysync.Insert, func(context.Context, string) (keysync.KEK, error) { return e.KEK, nil })
	if err != nil {
		t.Fatal(err)
	}
	id := NewID()
	if err := w.Write(t.Context(), e.Conn(t), map[string]any{"id": id, "tenant_id": tenant, "title": title, "body": body}); err != nil {
		t.Fatal(err)
	}
	return id
}

// NewID returns a random UUID in the text form Postgres prints.
func NewID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexdig = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexdig[c>>4], hexdig[c&15])
	}
	return string(out)
}
