package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
	"github.com/shapeseal/shapeseal/proxy"
)

func init() {
	register(command{"dev", "run the whole stack locally on embedded defaults (Postgres, Electric, proxy, demo keys and rows)", runDev})
}

// devUser is a demo user of `shapeseal dev`.
type devUser struct {
	name    string
	tenants []string
}

var devUsers = []devUser{
	{"alice", []string{"acme"}},
	{"bob", []string{"acme", "globex"}},
	{"carol", []string{"globex"}},
}

// devItems is the demo table; title and body are encrypted per tenant.
const devItems = `CREATE TABLE IF NOT EXISTS items (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id text NOT NULL,
	title text,
	body text,
	created_at timestamptz NOT NULL DEFAULT now()
)`

var devSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

func runDev(ctx context.Context, args []string) error { return dev(ctx, args, os.Stdout) }

func dev(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: shapeseal dev [flags]

Runs the whole stack on this machine: a private Postgres (unless
DATABASE_URL is set), an Electric-compatible shape server, a local KEK, a
root signing key, the key-sync proxy, demo users (alice, bob, carol) with
certified device identities and tokens, two tenants (acme, globex) whose
signed logs grant them, and encrypted rows in "items". It prints one line
"shapeseal dev ready {json}" and serves until interrupted, then cleans up.

Follow the demo shape, decrypted, as alice:

	shapeseal tail PROXY_URL/v1/shapes/items --token TOKEN --identity FILE \
		--root ROOT --encrypted items:title,body \
		--keys-url PROXY_URL/v1/shapes/keys --live

with the proxy URL, alice's token and identity file, and the root public key
(which devices pin to verify the tenants' logs) from the ready line; the
tenant logs come from PROXY_URL/v1/shapes/log.

Flags:
`)
		fs.PrintDefaults()
	}
	electricAddr := fs.String("electric-listen", "127.0.0.1:0", "address of the shape server")
	proxyAddr := fs.String("listen", "127.0.0.1:0", "address of the proxy")
	dir := fs.String("dir", "", "directory for identities, the root key and the KEK (default: a temporary one, removed on exit)")
	verbose := fs.Bool("v", false, "log every request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if *dir == "" {
		d, err := os.MkdirTemp("", "shapeseal-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	} else if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}

	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		fmt.Fprintln(os.Stderr, "shapeseal dev: starting a private Postgres")
		cl, err := pgtest.Start(ctx, pgtest.Options{Install: true})
		if err != nil {
			return err
		}
		defer cl.Stop()
		dbURL = cl.URL()
	}

	kekPath := filepath.Join(*dir, "kek.json")
	kek, err := keysync.OpenKEK("local://" + kekPath)
	if errors.Is(err, os.ErrNotExist) {
		kek, err = keysync.GenerateLocalKEK(kekPath)
	}
	if err != nil {
		return err
	}
	root, err := devRoot(filepath.Join(*dir, "root.key"))
	if err != nil {
		return err
	}
	users, err := seedDev(ctx, dbURL, kek, root, *dir)
	if err != nil {
		return err
	}

	secret := randomHex(16)
	srv, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: dbURL, Secret: secret, Logger: logger})
	if err != nil {
		return err
	}
	defer srv.Close()
	electricURL, stopElectric, err := serve(*electricAddr, srv)
	if err != nil {
		return err
	}
	defer stopElectric()

	jwtKey := make([]byte, 32)
	rand.Read(jwtKey)
	px, err := proxy.New(proxy.Config{
		Upstream: electricURL,
		Secret:   secret,
		Auth: proxy.AuthConfig{
			Algorithms: []string{"HS256"},
			HMACKeys:   []proxy.HMACKey{{Secret: jwtKey}},
			Issuer:     "shapeseal-dev",
		},
		Shapes: []proxy.ShapeRule{
			{Name: "items", Table: "items", Where: "tenant_id = ANY($1::text[])", Params: []string{"$tenants"}},
			{Name: "keys", Kind: proxy.KindTenantKeys},
			// Devices read the logs of their token's tenants, filtered like
			// the tenants' data, to verify them from the root.
			{Name: "log", Table: keysync.LogTable, Where: keysync.LogShapeWhere, Params: []string{"$tenants"},
				Columns: []string{"tenant_id", "seq", "entry"}, Replica: "full"},
		},
		Logger: logger,
	})
	if err != nil {
		return err
	}
	proxyURL, stopProxy, err := serve(*proxyAddr, px)
	if err != nil {
		return err
	}
	defer stopProxy()

	type userInfo struct {
		Token    string   `json:"token"`
		Identity string   `json:"identity"`
		Tenants  []string `json:"tenants"`
	}
	out := struct {
		ElectricURL string              `json:"electric_url"`
		ProxyURL    string              `json:"proxy_url"`
		DatabaseURL string              `json:"database_url"`
		Root        string              `json:"root"`
		KEK         string              `json:"kek"`
		Shapes      map[string]string   `json:"shapes"`
		Users       map[string]userInfo `json:"users"`
	}{
		ElectricURL: electricURL, ProxyURL: proxyURL, DatabaseURL: dbURL, Root: root.Public().String(), KEK: kek.URI(),
		Shapes: map[string]string{
			"items": proxyURL + "/v1/shapes/items",
			"keys":  proxyURL + "/v1/shapes/keys",
			"log":   proxyURL + "/v1/shapes/log",
		},
		Users: map[string]userInfo{},
	}
	for _, u := range devUsers {
		tok := signDevToken(jwtKey, map[string]any{
			"iss": "shapeseal-dev", "sub": u.name, "tenant_ids": u.tenants, "device_id": "laptop",
			"iat": time.Now().Unix(), "exp": time.Now().Add(24 * time.Hour).Unix(),
		})
		out.Users[u.name] = userInfo{Token: tok, Identity: users[u.name], Tenants: u.tenants}
	}
	ready, _ := json.Marshal(out)
	fmt.Fprintf(stdout, "shapeseal dev ready %s\n", ready)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "shapeseal dev: stopping")
	return nil
}

// devRoot loads the demo's root signing key from path, or creates it.
func devRoot(path string) (*chain.PrivateKey, error) {
	if _, err := os.Stat(path); err == nil {
		return keysync.LoadKeyFile(path)
	}
	return keysync.GenerateKeyFile(path)
}

// devIdentity loads a demo user's identity from path, or creates it, and
// returns its recipient.
func devIdentity(path string) (string, error) {
	id, err := keysync.LoadIdentityFile(path)
	if errors.Is(err, os.ErrNotExist) {
		hid, gerr := keysync.GenerateIdentity()
		if gerr != nil {
			return "", gerr
		}
		if err := keysync.WriteIdentityFile(path, hid); err != nil {
			return "", err
		}
		id, err = hid, nil
	}
	if err != nil {
		return "", err
	}
	return keysync.RecipientOf(id)
}

// seedDev creates the demo schema, identities, tenants (signed with the
// root key), device certificates, grants and encrypted rows, and returns
// each user's identity file.
func seedDev(ctx context.Context, dbURL string, kek keysync.KEK, root *chain.PrivateKey, dir string) (map[string]string, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	if err := keysync.ApplySchema(ctx, conn); err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, devItems); err != nil {
		return nil, err
	}
	roots := []keysync.VerifyKey{root.Public()}
	adm := &keysync.Admin{DB: conn, Roots: roots, Key: root, KEKs: keysync.UseKEK(kek)}
	for _, tenant := range []string{"acme", "globex"} {
		if _, err := adm.CreateTenant(ctx, kek, tenant); err != nil && !errors.Is(err, keysync.ErrTenantExists) {
			return nil, fmt.Errorf("tenant %s: %w", tenant, err)
		}
	}
	identities := map[string]string{}
	for _, u := range devUsers {
		path := filepath.Join(dir, u.name+".age")
		recipient, err := devIdentity(path)
		if err != nil {
			return nil, err
		}
		if err := adm.CertifyDevice(ctx, u.name, "laptop", recipient); err != nil {
			return nil, err
		}
		for _, t := range u.tenants {
			if _, err := adm.Grant(ctx, t, u.name); err != nil {
				return nil, fmt.Errorf("grant %s to %s: %w", t, u.name, err)
			}
		}
		identities[u.name] = path
	}
	w, err := keysync.NewWriter(devSpec, keysync.Insert, keysync.WriterOptions{Roots: roots, KEKs: keysync.UseKEK(kek), Floor: keysync.NewMemoryFloor()})
	if err != nil {
		return nil, err
	}
	rows := []map[string]any{
		{"tenant_id": "acme", "title": "Quarterly plan", "body": "Ship the encrypted sync demo."},
		{"tenant_id": "acme", "title": "Salaries", "body": "Only acme members can read this."},
		{"tenant_id": "globex", "title": "Launch codes", "body": "Only globex members can read this."},
	}
	for _, r := range rows {
		r["id"] = newUUID()
		if err := w.Write(ctx, conn, r); err != nil {
			return nil, err
		}
	}
	return identities, nil
}

// serve listens on addr and serves h until the returned stop is called. A
// proxy serves through its own Serve, which parks waiting live polls.
func serve(addr string, h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if p, ok := h.(*proxy.Proxy); ok {
		go p.Serve(hs, ln)
	} else {
		go hs.Serve(ln)
	}
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if hs.Shutdown(ctx) != nil {
			hs.Close()
		}
	}, nil
}

// signDevToken mints an HS256 JWT for a demo user.
func signDevToken(key []byte, claims map[string]any) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	payload, _ := json.Marshal(claims)
	signing := header + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
