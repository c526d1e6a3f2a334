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
	"strings"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
	"github.com/shapeseal/shapeseal/proxy"
)

func init() {
	register(command{"dev", "run the whole stack locally on embedded defaults (Postgres, Electric, proxy, demo keys and rows)", runDev})
}

func runDev(ctx context.Context, args []string) error { return dev(ctx, args, os.Stdout) }

const devUsage = `usage: shapeseal dev [flags]

Runs the whole stack on this machine: a private Postgres (unless
DATABASE_URL is set), an Electric-compatible shape server, a local KEK, a
root signing key, the key-sync proxy, demo users (alice, bob, carol) with
certified device identities and tokens, two tenants (acme, globex) whose
signed logs grant them, and encrypted rows in "items". It prints one line
"shapeseal dev ready {json}" and serves until interrupted (or until the
process that started it, such as "go run", goes away), then cleans up.

Follow the demo shape, decrypted, as alice:

	shapeseal tail PROXY_URL/v1/shapes/items --token TOKEN --identity FILE \
		--root ROOT --encrypted items:title,body \
		--keys-url PROXY_URL/v1/shapes/keys --live

with the proxy URL, alice's token and identity file, and the root public key
(which devices pin to verify the tenants' logs) from the ready line; the
tenant logs come from PROXY_URL/v1/shapes/log.

The shape server connects as a role of its own that may only read the
synced tables (items, shapeseal_tenant_keys, shapeseal_log: REPLICATION
and SELECT, no superuser) and follows a publication of those tables made
for it, electric_shapeseal_dev, as Electric does with
ELECTRIC_MANUAL_TABLE_PUBLISHING; the ready line gives its URL as
electric_database_url. Both are dropped on exit.

With DATABASE_URL, Postgres must run with wal_level=logical and the role
must have REPLICATION (or be a superuser); if it may not create that role
(superuser, or CREATEROLE owning the tables), the shape server connects as
DATABASE_URL's role and publishes the tables itself. A second run on the same
database reuses the demo when given the same --dir (same root key, KEK,
identities and token key); an earlier demo whose directory is gone is
dropped and made again; one kept in another directory, or tables and
tenants that shapeseal dev did not create, are refused unless --reset
drops them (the items table, the tenants acme and globex, the demo users'
devices).

flags:
`

// devFlags are the flags of shapeseal dev.
type devFlags struct {
	electricAddr, proxyAddr string
	envFile                 string
	dir                     string
	reset, verbose          bool
}

// parseDevFlags parses dev's flags; --help returns flag.ErrHelp.
func parseDevFlags(args []string) (*devFlags, error) {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), devUsage)
		fs.PrintDefaults()
	}
	var f devFlags
	fs.StringVar(&f.electricAddr, "electric-listen", "127.0.0.1:0", "address of the shape server")
	fs.StringVar(&f.proxyAddr, "listen", "127.0.0.1:0", "address of the proxy")
	fs.StringVar(&f.envFile, "env", "", "also write the ready line's URLs, root, tokens and identity files to this file as shell exports (PROXY_URL, SHAPESEAL_ROOT, ALICE_TOKEN, ALICE_IDENTITY, …), removed on exit")
	fs.StringVar(&f.dir, "dir", "", "directory keeping the root key, the KEK, the identities and the token key across runs (default: a temporary one, removed on exit)")
	fs.BoolVar(&f.reset, "reset", false, "with DATABASE_URL, drop the demo of an earlier run (table items, tenants acme and globex, the demo users' devices) and start clean")
	fs.BoolVar(&f.verbose, "v", false, "log every request")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	return &f, nil
}

// devStack is what shapeseal dev runs, as its ready line tells.
type devStack struct {
	dir         string            // the keys and identities
	dbURL       string            // DATABASE_URL, or the private Postgres's
	electricDB  string            // the database URL the shape server connects with
	electricURL string            // the shape server
	proxyURL    string            // the proxy
	kek         keysync.KEK       // the tenants' KEK
	root        *chain.PrivateKey // the root signing key
	jwtKey      []byte            // the demo tokens' HMAC key
	identities  map[string]string // each demo user's identity file
}

// dev runs shapeseal dev (see devUsage), printing its ready line to
// stdout, until ctx ends.
func dev(ctx context.Context, args []string, stdout io.Writer) error {
	f, err := parseDevFlags(args)
	if err != nil {
		return helpOK(err)
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx = watchParent(ctx)

	removeStaleDevDirs()
	temporary := f.dir == ""
	s := &devStack{dbURL: os.Getenv("DATABASE_URL")}
	var removeDir func()
	if s.dir, removeDir, err = openDevDir(f.dir); err != nil {
		return err
	}
	defer removeDir()
	private := s.dbURL == ""
	if private {
		fmt.Fprintln(os.Stderr, "shapeseal dev: starting a private Postgres")
		cl, err := pgtest.Start(ctx, pgtest.Options{Install: true})
		if err != nil {
			return err
		}
		defer cl.Stop()
		s.dbURL = cl.URL()
	}
	ro, err := s.setUpDB(ctx, private, temporary, f.reset)
	if err != nil {
		return err
	}
	if ro != nil {
		defer ro.drop()
	}
	secret := randomHex(16)
	srv, err := s.startElectric(ctx, ro, private, secret, logger)
	if err != nil {
		return err
	}
	defer srv.Close()
	electricURL, stopElectric, err := serve(f.electricAddr, srv)
	if err != nil {
		return err
	}
	defer stopElectric()
	s.electricURL = electricURL
	px, err := newDevProxy(electricURL, secret, s.jwtKey, logger)
	if err != nil {
		return err
	}
	proxyURL, stopProxy, err := serve(f.proxyAddr, px)
	if err != nil {
		return err
	}
	defer stopProxy()
	s.proxyURL = proxyURL

	out := s.readyLine()
	if f.envFile != "" {
		if err := writeEnvFile(f.envFile, out.env()); err != nil {
			return err
		}
		defer os.Remove(f.envFile)
	}
	ready, _ := json.Marshal(out)
	fmt.Fprintf(stdout, "shapeseal dev ready %s\n", ready)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "shapeseal dev: stopping")
	return nil
}

// setUpDB checks the database, loads or makes the keys in s.dir, makes (or,
// with DATABASE_URL, reuses) the demo in the database, and the role the
// shape server connects as: nil when it must connect as DATABASE_URL's
// role.
func (s *devStack) setUpDB(ctx context.Context, private, temporary, reset bool) (*devElectric, error) {
	// Check the database before anything is written to it.
	conn, err := connectDB(ctx, s.dbURL, "DATABASE_URL")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	if err := checkReplication(ctx, conn); err != nil {
		return nil, err
	}
	if err := s.loadKeys(); err != nil {
		return nil, err
	}
	if !private {
		if err := prepareDevDB(ctx, conn, s.root.Public().String(), s.dir, temporary, reset); err != nil {
			return nil, err
		}
	}
	if s.identities, err = seedDev(ctx, conn, s.kek, s.root, s.dir); err != nil {
		return nil, err
	}
	// Electric reads as a role of its own, from a publication made for it.
	ro, err := setupDevElectric(ctx, conn, s.dbURL, private)
	if err != nil {
		if private {
			return nil, err
		}
		fmt.Fprintf(os.Stderr, "shapeseal dev: the shape server connects as DATABASE_URL's role (a read-only role of its own could not be made: %v)\n", err)
		return nil, nil
	}
	return ro, nil
}

// loadKeys loads the KEK, the root signing key and the token key from
// s.dir, or makes them.
func (s *devStack) loadKeys() error {
	kekPath := filepath.Join(s.dir, "kek.json")
	kek, err := keysync.OpenKEK("local://" + kekPath)
	if errors.Is(err, os.ErrNotExist) {
		kek, err = keysync.GenerateLocalKEK(kekPath)
	}
	if err != nil {
		return err
	}
	s.kek = kek
	if s.root, err = devRoot(filepath.Join(s.dir, "root.key")); err != nil {
		return err
	}
	s.jwtKey, err = devJWTKey(filepath.Join(s.dir, "jwt.key"))
	return err
}

// startElectric starts the shape server, with the API secret secret, as
// the role ro, or as DATABASE_URL's role when ro is nil or, with
// DATABASE_URL, cannot serve.
func (s *devStack) startElectric(ctx context.Context, ro *devElectric, private bool, secret string, logger *slog.Logger) (*electrictest.Server, error) {
	s.electricDB = s.dbURL
	opts := electrictest.Options{DatabaseURL: s.dbURL, Secret: secret, Logger: logger}
	if ro != nil {
		s.electricDB = ro.url
		opts.DatabaseURL, opts.Publication = ro.url, devPublication
	}
	srv, err := electrictest.New(ctx, opts)
	if err != nil && ro != nil && !private {
		fmt.Fprintf(os.Stderr, "shapeseal dev: the shape server connects as DATABASE_URL's role: as %s: %v\n", ro.role, err)
		s.electricDB = s.dbURL
		opts.DatabaseURL, opts.Publication = s.dbURL, ""
		srv, err = electrictest.New(ctx, opts)
	}
	return srv, err
}

// newDevProxy makes the demo's proxy in front of the shape server at
// electricURL: the items shape by the token's tenants, the tenant keys and
// the tenants' logs, for HS256 tokens signed with jwtKey.
func newDevProxy(electricURL, secret string, jwtKey []byte, logger *slog.Logger) (*proxy.Proxy, error) {
	return proxy.New(proxy.Config{
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
}

// devReadyLine is the JSON object of the ready line.
type devReadyLine struct {
	ElectricURL string                  `json:"electric_url"`
	ProxyURL    string                  `json:"proxy_url"`
	DatabaseURL string                  `json:"database_url"`
	ElectricDB  string                  `json:"electric_database_url"`
	Dir         string                  `json:"dir"`
	Root        string                  `json:"root"`
	KEK         string                  `json:"kek"`
	Shapes      map[string]string       `json:"shapes"`
	Users       map[string]devReadyUser `json:"users"`
}

// devReadyUser is a demo user in the ready line, with a fresh token.
type devReadyUser struct {
	Token    string   `json:"token"`
	Identity string   `json:"identity"`
	Tenants  []string `json:"tenants"`
}

// readyLine describes s, with a token for each demo user.
func (s *devStack) readyLine() devReadyLine {
	out := devReadyLine{
		ElectricURL: s.electricURL, ProxyURL: s.proxyURL, DatabaseURL: s.dbURL, ElectricDB: s.electricDB, Dir: s.dir, Root: s.root.Public().String(), KEK: s.kek.URI(),
		Shapes: map[string]string{
			"items": s.proxyURL + "/v1/shapes/items",
			"keys":  s.proxyURL + "/v1/shapes/keys",
			"log":   s.proxyURL + "/v1/shapes/log",
		},
		Users: map[string]devReadyUser{},
	}
	for _, u := range devUsers {
		tok := signDevToken(s.jwtKey, map[string]any{
			"iss": "shapeseal-dev", "sub": u.name, "tenant_ids": u.tenants, "device_id": "laptop",
			"iat": time.Now().Unix(), "exp": time.Now().Add(24 * time.Hour).Unix(),
		})
		out.Users[u.name] = devReadyUser{Token: tok, Identity: s.identities[u.name], Tenants: u.tenants}
	}
	return out
}

// env is the ready line as the shell variables of --env.
func (out devReadyLine) env() [][2]string {
	vars := [][2]string{{"ELECTRIC_URL", out.ElectricURL}, {"PROXY_URL", out.ProxyURL}, {"DATABASE_URL", out.DatabaseURL}, {"ELECTRIC_DATABASE_URL", out.ElectricDB}, {"SHAPESEAL_ROOT", out.Root}}
	for _, u := range devUsers {
		up := strings.ToUpper(u.name)
		vars = append(vars, [2]string{up + "_TOKEN", out.Users[u.name].Token}, [2]string{up + "_IDENTITY", out.Users[u.name].Identity})
	}
	return vars
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

// writeEnvFile writes vars as shell exports to path, mode 0600 (the tokens
// are secrets), through a temporary file and a rename, so that a reader
// waiting for the file never sees half of it.
func writeEnvFile(path string, vars [][2]string) error {
	var b strings.Builder
	b.WriteString("# shapeseal dev: source this file (. FILE) in a shell\n")
	for _, v := range vars {
		fmt.Fprintf(&b, "export %s='%s'\n", v[0], strings.ReplaceAll(v[1], "'", `'\''`))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("--env: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--env: %w", err)
	}
	return nil
}
