package keysync_test

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/proxy"
)

// A service follows a shape through the proxy, decrypted and decoded into
// structs, with one call: keysync.Follow wires the keyring (the key and
// log shapes, verified from the pinned roots, with a floor file next to
// the identity), the decrypter and the typed shape, and Close stops them
// together.
func ExampleFollow() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The proxy in front of Electric, a tenant acme with one encrypted row,
	// and alice's laptop, granted acme: its identity file and a token.
	d := followDeployment()
	defer d.stop()

	type item struct {
		ID    int64             `shape:"id"`
		Title keysync.Plaintext `shape:"title"` // or a string, if every cell must open
	}
	items, err := keysync.Follow[item](ctx, keysync.FollowOptions{
		ProxyURL:     d.proxyURL,
		Shape:        "items", // and the rules "keys" and "log"
		Tokens:       client.StaticToken(d.token),
		IdentityFile: d.identityFile, // the floor file goes next to it
		Roots:        d.roots,        // keysync.ParseVerifyKeys(os.Getenv("SHAPESEAL_ROOT"))
		Tables:       []keysync.TableSpec{d.spec},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer items.Close()

	// The first consistent view, and each batch after it.
	v, err := items.Wait(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range v.All() {
		fmt.Println(it.ID, it.Title)
	}
	changes := items.Changes(ctx)
	d.write(2, "Hiring plan")
	for b := range changes {
		for _, e := range b.Inserted {
			fmt.Println("inserted", e.Value.ID, e.Value.Title)
		}
		break
	}
	// Output:
	// 1 Quarterly numbers
	// inserted 2 Hiring plan
}

type followDep struct {
	proxyURL     string
	token        string
	identityFile string
	roots        []keysync.VerifyKey
	spec         keysync.TableSpec
	admin        *keysync.Admin
	kek          keysync.KEK
	db           *pgxpool.Pool
	jwtKey       []byte
	write        func(id int, title string)
	stop         func()
}

// mint returns a token the deployment's proxy accepts.
func (d *followDep) mint(user, device string, tenants ...string) string {
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"sub": user, "device_id": device, "tenant_ids": tenants,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, d.jwtKey)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

// followDeployment stands for what a service finds deployed: Postgres and
// Electric (as in exampleDeployment) behind the proxy, with the rules
// items (the token's tenants' rows), keys and log; a tenant acme with a
// row sealed by a writer; and alice's laptop, certified and granted acme,
// with its identity in a file and a token.
func followDeployment() *followDep {
	ctx := context.Background()
	tb := &exampleTB{}
	d := &followDep{stop: func() {
		for i := len(tb.cleanups) - 1; i >= 0; i-- {
			tb.cleanups[i]()
		}
	}}
	url := pgtest.NewDB(tb)
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(db.Close)
	d.db = db
	if err := keysync.ApplySchema(ctx, db); err != nil {
		tb.Fatal(err)
	}
	if _, err := db.Exec(ctx, `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text)`); err != nil {
		tb.Fatal(err)
	}
	srv := electrictest.StartTest(tb, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	d.jwtKey = []byte(rand.Text() + rand.Text())
	px, err := proxy.New(proxy.Config{
		Upstream: srv.URL,
		Auth:     proxy.AuthConfig{Algorithms: []string{"HS256"}, HMACKeys: []proxy.HMACKey{{Secret: d.jwtKey}}},
		Shapes: []proxy.ShapeRule{
			{Name: "items", Table: "items", Where: "tenant_id = ANY($1::text[])", Params: []string{"$tenants"}},
			{Name: "keys", Kind: proxy.KindTenantKeys},
			{Name: "log", Table: keysync.LogTable, Where: keysync.LogShapeWhere, Params: []string{"$tenants"},
				Columns: []string{"tenant_id", "seq", "entry"}, Replica: "full"},
		},
		Limits: proxy.Limits{RequestsPerSecond: -1, MaxLivePerUser: -1},
	})
	if err != nil {
		tb.Fatal(err)
	}
	hs := httptest.NewServer(px)
	tb.Cleanup(func() { hs.CloseClientConnections(); hs.Close() })
	d.proxyURL = hs.URL

	dir, _ := os.MkdirTemp("", "shapeseal-example")
	tb.Cleanup(func() { os.RemoveAll(dir) })
	root, _ := keysync.GenerateKeyFile(filepath.Join(dir, "root.key"))
	kek, _ := keysync.GenerateLocalKEK(filepath.Join(dir, "kek.json"))
	d.roots, d.kek = []keysync.VerifyKey{root.Public()}, kek
	d.admin = &keysync.Admin{DB: db, Roots: d.roots, Key: root, KEKs: keysync.UseKEK(kek)}
	if _, err := d.admin.CreateTenant(ctx, kek, "acme"); err != nil {
		tb.Fatal(err)
	}
	d.identityFile = d.device("alice", "laptop", dir)
	if _, err := d.admin.Grant(ctx, "acme", "alice"); err != nil {
		tb.Fatal(err)
	}
	d.token = d.mint("alice", "laptop", "acme")
	d.spec = keysync.TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	w, err := keysync.NewWriter(d.spec, keysync.Insert, keysync.WriterOptions{Roots: d.roots, KEKs: keysync.UseKEK(kek), Floor: keysync.NewMemoryFloor()})
	if err != nil {
		tb.Fatal(err)
	}
	d.write = func(id int, title string) {
		if err := w.Write(ctx, db, map[string]any{"id": id, "tenant_id": "acme", "title": title}); err != nil {
			tb.Fatal(err)
		}
	}
	d.write(1, "Quarterly numbers")
	return d
}

// device writes a new identity for user's device into dir, certifies it
// and returns the file.
func (d *followDep) device(user, device, dir string) string {
	id, _ := keysync.GenerateIdentity()
	file := filepath.Join(dir, user+"-"+device+".age")
	if err := keysync.WriteIdentityFile(file, id); err != nil {
		panic(err)
	}
	rcpt, _ := keysync.RecipientOf(id)
	if err := d.admin.CertifyDevice(context.Background(), user, device, rcpt); err != nil {
		panic(err)
	}
	return file
}

// TestFollow: rows arrive decrypted and typed, live; a cell the device has
// no key for is a Plaintext's error, or, into a string field, leaves its
// row out by default; Close stops everything; a refused token is Err.
func TestFollow(t *testing.T) {
	t.Parallel()
	d := followDeployment()
	t.Cleanup(d.stop)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// globex: a tenant whose rows alice's token may fetch but whose keys
	// her laptop does not hold.
	if _, err := d.admin.CreateTenant(ctx, d.kek, "globex"); err != nil {
		t.Fatal(err)
	}
	w, _ := keysync.NewWriter(d.spec, keysync.Insert, keysync.WriterOptions{Roots: d.roots, KEKs: keysync.UseKEK(d.kek), Floor: keysync.NewMemoryFloor()})
	if err := w.Write(ctx, d.db, map[string]any{"id": 100, "tenant_id": "globex", "title": "not for alice"}); err != nil {
		t.Fatal(err)
	}
	token := client.StaticToken(d.mint("alice", "laptop", "acme", "globex"))

	type lenient struct {
		ID     int64             `shape:"id"`
		Tenant string            `shape:"tenant_id"`
		Title  keysync.Plaintext `shape:"title"`
	}
	opts := keysync.FollowOptions{ProxyURL: d.proxyURL, Shape: "items", Tokens: token, IdentityFile: d.identityFile,
		Roots: d.roots, Tables: []keysync.TableSpec{d.spec}, KeyWait: 200 * time.Millisecond}
	f, err := keysync.Follow[lenient](ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := f.Wait(ctx, func(v *client.View[lenient]) bool { return v.Len() == 2 })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range v.All() {
		got = append(got, fmt.Sprintf("%d %s %s", it.ID, it.Tenant, it.Title))
	}
	if strings.Join(got, "|") != "1 acme Quarterly numbers|100 globex <no_key>" {
		t.Errorf("rows %q", got)
	}
	d.write(3, "live")
	if _, err := f.Wait(ctx, func(v *client.View[lenient]) bool {
		it, ok := v.Get(`"public"."items"/"3"`)
		return ok && it.Title.Text == "live"
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case <-f.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if _, err := f.Wait(ctx, nil); err != nil {
		t.Errorf("Wait after Close, with a view up to date: %v", err)
	}

	checkFollowStrict(t, ctx, opts)
}

// checkFollowStrict: a string field cannot hold a cell that did not open:
// by default its row is left out. And a token the proxy refuses stops
// following with an error. opts is TestFollow's, alice's.
func checkFollowStrict(t *testing.T, ctx context.Context, opts keysync.FollowOptions) {
	t.Helper()
	type strict struct {
		ID    int64  `shape:"id"`
		Title string `shape:"title"`
	}
	opts.Floor = keysync.NewMemoryFloor()
	s, err := keysync.Follow[strict](ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sv, err := s.Wait(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sv.Len() != 2 {
		t.Errorf("strict view has %d rows, want acme's 2", sv.Len())
	}
	for it := range sv.Values() {
		if it.ID == 100 {
			t.Errorf("globex's row decoded: %+v", it)
		}
	}

	// A token the proxy refuses stops following with an error.
	opts.Tokens = client.StaticToken("not a token")
	bad, err := keysync.Follow[strict](ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Wait(ctx, nil); err == nil || bad.Err() == nil {
		t.Errorf("Wait = %v, Err = %v; want the 401", err, bad.Err())
	}
	if err := bad.Close(); err == nil {
		t.Error("Close returned no error")
	}
}

func TestFollowOptions(t *testing.T) {
	ctx := t.Context()
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	id, _ := keysync.GenerateIdentity()
	for name, o := range map[string]keysync.FollowOptions{
		"no proxy":    {Shape: "items", Tokens: client.StaticToken("t"), Identity: id, Floor: keysync.NewMemoryFloor(), Tables: []keysync.TableSpec{spec}},
		"no shape":    {ProxyURL: "http://p", Tokens: client.StaticToken("t"), Identity: id, Floor: keysync.NewMemoryFloor(), Tables: []keysync.TableSpec{spec}},
		"no tokens":   {ProxyURL: "http://p", Shape: "items", Identity: id, Floor: keysync.NewMemoryFloor(), Tables: []keysync.TableSpec{spec}},
		"no identity": {ProxyURL: "http://p", Shape: "items", Tokens: client.StaticToken("t"), Floor: keysync.NewMemoryFloor(), Tables: []keysync.TableSpec{spec}},
		"no floor":    {ProxyURL: "http://p", Shape: "items", Tokens: client.StaticToken("t"), Identity: id, Tables: []keysync.TableSpec{spec}},
		"no tables":   {ProxyURL: "http://p", Shape: "items", Tokens: client.StaticToken("t"), Identity: id, Floor: keysync.NewMemoryFloor()},
		"no roots":    {ProxyURL: "http://p", Shape: "items", Tokens: client.StaticToken("t"), Identity: id, Floor: keysync.NewMemoryFloor(), Tables: []keysync.TableSpec{spec}},
		"keys url":    {ProxyURL: "http://p", Shape: "items", KeysURL: "http://p/v1/shapes/tenant-keys", Tokens: client.StaticToken("t"), Identity: id, Floor: keysync.NewMemoryFloor(), Tables: []keysync.TableSpec{spec}},
	} {
		if f, err := keysync.Follow[struct{}](ctx, o); err == nil {
			f.Close()
			t.Errorf("%s: Follow did not fail", name)
		}
	}
}

func TestLogURLFor(t *testing.T) {
	for keys, want := range map[string]string{
		"http://127.0.0.1:3000/v1/shapes/keys":        "http://127.0.0.1:3000/v1/shapes/log",
		"https://sync.example/app/v1/shapes/keys?x=1": "https://sync.example/app/v1/shapes/log?x=1",
		"http://127.0.0.1:3000/v1/shapes/tenant-keys": "",
	} {
		got, err := keysync.LogURLFor(keys)
		if got != want || (err != nil) != (want == "") {
			t.Errorf("LogURLFor(%q) = %q, %v; want %q", keys, got, err, want)
		}
	}
}

func TestPlaintext(t *testing.T) {
	var p keysync.Plaintext
	ce := &keysync.CellError{Column: "title", Err: keysync.ErrNoKey}
	for _, c := range []struct {
		in   any
		json string
		str  string
	}{
		{"hi", `"hi"`, "hi"},
		{nil, `null`, ""},
		{ce, `{"error":"no_key","message":"` + keysync.ErrNoKey.Error() + `"}`, "<no_key>"},
	} {
		if err := p.Scan(c.in); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(p)
		if string(b) != c.json || p.String() != c.str {
			t.Errorf("%v: %s, %q", c.in, b, p.String())
		}
	}
	if err := p.Scan(42); err == nil || errors.Is(err, keysync.ErrNoKey) {
		t.Errorf("Scan(42) = %v", err)
	}
}
