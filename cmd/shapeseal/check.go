package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/proxy"
)

// `shapeseal check`: the production checklist as a command. Each row is
// checked against the running parts (Electric, the proxy, Postgres) and the
// proxy's config file, apart and within checkTimeout; the command prints
// one line per row and exits 1 when a row fails.

func init() {
	register(command{"check", "check a deployment against the production checklist (exit 1 if a row fails)",
		func(ctx context.Context, args []string) error {
			if code := runCheck(ctx, args, os.Stdout, os.Stderr, os.Getenv); code != 0 {
				os.Exit(code)
			}
			return nil
		}})
}

// checkTimeout bounds each row.
const checkTimeout = 5 * time.Second

// checkProbeTable is the table of the electric-secret probe unless --table
// names one: a table that does not exist, so that the probe never creates
// a shape (nor adds a table to Electric's publication). Electric checks the
// secret before the table: 401 without it, 400 with it.
const checkProbeTable = "shapeseal_check_no_such_table"

const checkUsage = `usage: shapeseal check --electric-url URL [--database-url URL] [--proxy-config FILE] [--proxy-url URL]
       [--electric-secret S] [--electric-role NAME] [--publication NAME] [--behind-tls] [--table NAME] [--json]

Checks a deployment against the production checklist and prints one line
per row: "ok", "FAIL" (with what to do) or "skip" (with why it could not be
checked). Exits 1 when a row fails, 2 on misuse. Rows:

  electric-secret      Electric refuses a shape request without the secret (401)
                       and accepts the given one
  electric-not-public  Electric is not on the proxy's host:port, and its address
                       is loopback or private
  health               Electric's /v1/health (and the proxy's /healthz) answer 200
  where-pinned         every table rule of the proxy config has a where
  tokens               the proxy config pins issuer and audience, with a small leeway
  rate-limits          the proxy config does not disable its rate and live limits
  electric-role        Electric's Postgres role is no superuser and may not write
                       the published tables
  publication          Electric's publication is not FOR ALL TABLES and has the
                       key tables (shapeseal_tenant_keys, shapeseal_log)
  tls                  the proxy URL is https, or TLS terminates in front of it

Each row takes at most 5 s. Secrets are never printed.

flags:
`

// checkRow is one line of the report.
type checkRow struct {
	Row    string `json:"row"`
	Status string `json:"status"` // "ok", "FAIL" or "skip"
	Detail string `json:"detail"`
}

type checkResult struct{ status, detail string }

func checkOK(format string, args ...any) checkResult {
	return checkResult{"ok", fmt.Sprintf(format, args...)}
}
func checkFail(format string, args ...any) checkResult {
	return checkResult{"FAIL", fmt.Sprintf(format, args...)}
}
func checkSkip(format string, args ...any) checkResult {
	return checkResult{"skip", fmt.Sprintf(format, args...)}
}

// checker holds what the rows check.
type checker struct {
	electric    *url.URL
	proxyURL    *url.URL      // nil: none given
	cfg         *proxy.Config // nil: no --proxy-config
	databaseURL string        // "": none
	secret      string        // Electric's secret to try; "": none
	role        string        // --electric-role
	publication string        // --publication; "": electric*
	behindTLS   bool
	table       string
	client      *http.Client
}

// runCheck is `shapeseal check`; it returns the exit code.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), checkUsage)
		fs.PrintDefaults()
	}
	electricURL := fs.String("electric-url", "", "Electric's base URL, as the proxy reaches it (default $ELECTRIC_URL, else the proxy config's upstream)")
	databaseURL := fs.String("database-url", "", "Postgres URL for the electric-role and publication rows (default $DATABASE_URL)")
	proxyConfig := fs.String("proxy-config", "", "the proxy's YAML config file (shapeseal proxy --config)")
	proxyURL := fs.String("proxy-url", "", "the proxy's URL, as clients reach it")
	secret := fs.String("electric-secret", "", "Electric's secret, to check that Electric accepts it (default $ELECTRIC_SECRET; prefer the variable)")
	role := fs.String("electric-role", "", "the Postgres role Electric connects as (default: the role holding this database's replication slot, else the --database-url user)")
	publication := fs.String("publication", "", "the publication Electric uses (default: every publication named electric*)")
	behindTLS := fs.Bool("behind-tls", false, "TLS terminates in front of the proxy (a load balancer or ingress)")
	table := fs.String("table", "", "table of the electric-secret probe (default: one that does not exist, so no shape is created)")
	asJSON := fs.Bool("json", false, "print a JSON array of {row, status, detail}")
	misuse := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "shapeseal check: "+format+"\nRun \"shapeseal check --help\" for usage.\n", args...)
		return 2
	}
	// -h prints the usage to stdout (exit 0); a bad flag is a misuse.
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return misuse("%v", err)
	}
	if fs.NArg() > 0 {
		return misuse("no arguments are taken (got %q)", fs.Arg(0))
	}
	c := &checker{
		databaseURL: *databaseURL, secret: *secret, role: *role, publication: *publication,
		behindTLS: *behindTLS, table: *table,
		client: &http.Client{
			Timeout: checkTimeout,
			// A redirect is an answer in itself (and must not carry the
			// secret elsewhere).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	if c.databaseURL == "" {
		c.databaseURL = getenv("DATABASE_URL")
	}
	if c.secret == "" {
		c.secret = getenv("ELECTRIC_SECRET")
	}
	if c.table == "" {
		c.table = checkProbeTable
	}
	if *proxyConfig != "" {
		cfg, err := proxy.LoadConfig(*proxyConfig, checkConfigEnv(getenv))
		if err != nil {
			return misuse("--proxy-config: %v", err)
		}
		c.cfg = &cfg
	}
	if *electricURL == "" && c.cfg != nil {
		*electricURL = c.cfg.Upstream // with $ELECTRIC_URL applied
	}
	if *electricURL == "" {
		*electricURL = getenv("ELECTRIC_URL")
	}
	if *electricURL == "" {
		return misuse("--electric-url is required (or $ELECTRIC_URL, or a --proxy-config with an upstream)")
	}
	var err error
	if c.electric, err = parseCheckURL(*electricURL); err != nil {
		return misuse("--electric-url: %v", err)
	}
	if *proxyURL != "" {
		if c.proxyURL, err = parseCheckURL(*proxyURL); err != nil {
			return misuse("--proxy-url: %v", err)
		}
	}
	if c.databaseURL != "" {
		if _, err := pgx.ParseConfig(c.databaseURL); err != nil {
			return misuse("--database-url: cannot parse it") // the error may quote the password
		}
	}

	rows := c.run(ctx)
	failed := false
	for _, r := range rows {
		failed = failed || r.Status == "FAIL"
	}
	if *asJSON {
		b, _ := json.MarshalIndent(rows, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		w := 0
		for _, r := range rows {
			w = max(w, len(r.Row)+1)
		}
		for _, r := range rows {
			fmt.Fprintf(stdout, "%-4s %-*s %s\n", r.Status, w, r.Row+":", r.Detail)
		}
	}
	if failed {
		return 1
	}
	return 0
}

// checkConfigEnv is the environment the proxy config is loaded with: the
// real one, except that a missing variable that a config may read a secret
// from (hmac_keys secret_env, JWT_SECRET) reads as a placeholder, so that
// the config can be checked where the proxy's secrets are not at hand. The
// rows never use key material. The variables whose values are parsed
// (URLs, PEM) stay as they are.
func checkConfigEnv(getenv func(string) string) func(string) string {
	return func(k string) string {
		v := getenv(k)
		switch k {
		case "ELECTRIC_URL", "ELECTRIC_SECRET", "JWKS_URL", "JWT_PUBLIC_KEY":
			return v
		}
		if v == "" {
			return "shapeseal-check-placeholder-not-a-secret-0123456789abcdef0123456789abcdef"
		}
		return v
	}
}

func parseCheckURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, errors.New("want http://HOST[:PORT] or https://…")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	return u, nil
}

// shown is a URL as printed: no user info, query or fragment.
func shown(u *url.URL) string {
	v := *u
	v.User = nil
	return v.String()
}

func (c *checker) run(ctx context.Context) []checkRow {
	rows := []struct {
		name string
		f    func(context.Context) checkResult
	}{
		{"electric-secret", c.checkSecret},
		{"electric-not-public", c.checkNotPublic},
		{"health", c.checkHealth},
		{"where-pinned", c.checkWherePinned},
		{"tokens", c.checkTokens},
		{"rate-limits", c.checkRateLimits},
		{"electric-role", c.checkRole},
		{"publication", c.checkPublication},
		{"tls", c.checkTLS},
	}
	// What a detail must never show.
	var hide []string
	if c.secret != "" {
		hide = append(hide, c.secret, url.QueryEscape(c.secret))
	}
	if c.databaseURL != "" {
		if pc, err := pgx.ParseConfig(c.databaseURL); err == nil && pc.Password != "" {
			hide = append(hide, pc.Password, url.QueryEscape(pc.Password))
		}
	}
	out := make([]checkRow, len(rows))
	var wg sync.WaitGroup
	for i, r := range rows {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, checkTimeout)
			defer cancel()
			res := r.f(rctx)
			if rctx.Err() != nil && res.status != "ok" {
				res.detail += fmt.Sprintf(" (the check ran out of its %s)", checkTimeout)
			}
			for _, s := range hide {
				if len(s) >= 3 {
					res.detail = strings.ReplaceAll(res.detail, s, "***")
				}
			}
			out[i] = checkRow{Row: r.name, Status: res.status, Detail: res.detail}
		})
	}
	wg.Wait()
	return out
}

// get requests u and returns the status and the start of the body.
func (c *checker) get(ctx context.Context, u string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // not the URL, which may carry the secret
		}
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.StatusCode, strings.TrimSpace(string(body)), nil
}

func (c *checker) shapeURL(secret string) string {
	q := url.Values{"table": {c.table}, "offset": {"-1"}}
	if secret != "" {
		q.Set("secret", secret)
	}
	return c.electric.String() + "/v1/shape?" + q.Encode()
}

func (c *checker) checkSecret(ctx context.Context) checkResult {
	const advice = "set ELECTRIC_SECRET on Electric (and the same in the proxy's environment)"
	status, _, err := c.get(ctx, c.shapeURL(""))
	switch {
	case err != nil:
		return checkSkip("Electric at %s did not answer: %v", shown(c.electric), err)
	case status == http.StatusOK:
		return checkFail("Electric serves shapes without a secret: %s", advice)
	case status >= 500:
		return checkSkip("Electric answered %d to a shape request without a secret; check again once it is healthy", status)
	case status != http.StatusUnauthorized && status != http.StatusForbidden:
		return checkFail("Electric answered %d, not 401, to a shape request without a secret: it does not check one; %s", status, advice)
	}
	if c.secret == "" {
		return checkOK("Electric answers %d without a secret (no --electric-secret or $ELECTRIC_SECRET to try)", status)
	}
	with, _, err := c.get(ctx, c.shapeURL(c.secret))
	switch {
	case err != nil:
		return checkSkip("Electric answers %d without a secret, but did not answer with it: %v", status, err)
	case with == http.StatusUnauthorized || with == http.StatusForbidden:
		return checkFail("Electric answers %d without a secret and %d with the given one: it is not Electric's secret; give the proxy (ELECTRIC_SECRET) the one Electric has", status, with)
	}
	if with == http.StatusBadRequest && c.table == checkProbeTable {
		return checkOK("Electric answers %d without a secret and accepts the given one (then 400: the probe's table does not exist)", status)
	}
	return checkOK("Electric answers %d without a secret and accepts the given one (%d)", status, with)
}

// hostPort returns the lowercased host and the port (default by scheme).
func hostPort(u *url.URL) (string, string) {
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		host = "127.0.0.1" // ::1 and 127.x alike
	}
	return host, port
}

// cgnat is the shared address space (RFC 6598): not routed on the internet.
var cgnat = &net.IPNet{IP: net.IPv4(100, 64, 0, 0), Mask: net.CIDRMask(10, 32)}

func privateIP(ip net.IP) bool {
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || cgnat.Contains(ip)
}

func (c *checker) checkNotPublic(ctx context.Context) checkResult {
	eh, ep := hostPort(c.electric)
	portNote := "no --proxy-url to compare with"
	if c.proxyURL != nil {
		ph, pp := hostPort(c.proxyURL)
		if eh == ph && ep == pp {
			return checkFail("Electric (%s) is at the proxy's address (%s): clients must reach Electric only through the proxy; serve them on different ports and keep Electric's private", shown(c.electric), shown(c.proxyURL))
		}
		portNote = "not the proxy's " + net.JoinHostPort(ph, pp)
	}
	host := c.electric.Hostname()
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil || len(addrs) == 0 {
			return checkSkip("cannot resolve %s to see its address (%v); its port is %s", host, err, portNote)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	var shownIPs []string
	for _, ip := range ips {
		if !privateIP(ip) {
			return checkFail("Electric's address %s (%s) is public: bind Electric to a private interface or firewall its port, so that only the proxy reaches it", ip, host)
		}
		shownIPs = append(shownIPs, ip.String())
	}
	return checkOK("Electric at %s is on a loopback or private address (%s), %s", net.JoinHostPort(host, ep), strings.Join(shownIPs, ", "), portNote)
}

func (c *checker) checkHealth(ctx context.Context) checkResult {
	status, body, err := c.get(ctx, c.electric.String()+"/v1/health")
	if err != nil {
		return checkFail("Electric at %s did not answer: %v", shown(c.electric), err)
	}
	if status != http.StatusOK {
		return checkFail("Electric's /v1/health answered %d %s: see Electric's logs (replication, database connection)", status, abbrevBody(body))
	}
	detail := fmt.Sprintf("Electric %d %s", status, abbrevBody(body))
	if c.proxyURL == nil {
		return checkOK("%s (no --proxy-url for the proxy's /healthz)", detail)
	}
	status, body, err = c.get(ctx, c.proxyURL.String()+"/healthz")
	if err != nil {
		return checkFail("%s, but the proxy at %s did not answer: %v", detail, shown(c.proxyURL), err)
	}
	if status != http.StatusOK {
		return checkFail("%s, but the proxy's /healthz answered %d %s: check the proxy's upstream and its logs", detail, status, abbrevBody(body))
	}
	return checkOK("%s, proxy %d %s", detail, status, abbrevBody(body))
}

func abbrevBody(b string) string {
	b = strings.Join(strings.Fields(b), " ")
	if len(b) > 80 {
		b = b[:80] + "…"
	}
	return b
}

const noConfig = "no --proxy-config"

func (c *checker) checkWherePinned(context.Context) checkResult {
	if c.cfg == nil {
		return checkSkip(noConfig)
	}
	var unpinned, fixed, unknown []string
	pinned := 0
	for _, r := range c.cfg.Shapes {
		switch r.Kind {
		case proxy.KindTenantKeys:
			pinned++ // user_id = $user by construction
			continue
		case "", proxy.KindTable:
		default:
			unknown = append(unknown, fmt.Sprintf("%s (kind %s)", r.Name, r.Kind))
			continue
		}
		switch {
		case strings.TrimSpace(r.Where) == "":
			unpinned = append(unpinned, fmt.Sprintf("%s (table %s)", r.Name, r.Table))
		case len(r.Params) == 0:
			fixed = append(fixed, r.Name)
		default:
			pinned++
		}
	}
	if len(unpinned) > 0 {
		return checkFail("rule %s has no where: any valid token reads the whole table. Pin it to the token, e.g. where: \"tenant_id = ANY($1::text[])\" with params: [$tenants]; the config has no public marker, so a table meant for every token needs its filter written out as a where without params",
			strings.Join(unpinned, ", rule "))
	}
	detail := fmt.Sprintf("%d of %d rules pinned to the token", pinned, len(c.cfg.Shapes))
	if len(fixed) > 0 {
		detail += "; a fixed where (the same rows for every token): " + strings.Join(fixed, ", ")
	}
	if len(unknown) > 0 {
		detail += "; not checked: " + strings.Join(unknown, ", ")
	}
	return checkOK("%s", detail)
}

// maxLeeway is the clock skew the tokens row accepts.
const maxLeeway = 5 * time.Minute

func (c *checker) checkTokens(context.Context) checkResult {
	if c.cfg == nil {
		return checkSkip(noConfig)
	}
	a := c.cfg.Auth
	var problems []string
	if len(a.Algorithms) == 0 {
		problems = append(problems, "auth.algorithms is empty: list the algorithms your issuer signs with")
	}
	for _, alg := range a.Algorithms {
		if strings.EqualFold(alg, "none") {
			problems = append(problems, `auth.algorithms lists "none": remove it`)
		}
	}
	if a.Leeway < 0 || a.Leeway > maxLeeway {
		problems = append(problems, fmt.Sprintf("auth.leeway %s lets expired tokens in that long: keep it within %s (30s is usual)", a.Leeway, maxLeeway))
	}
	if a.Issuer == "" {
		problems = append(problems, "auth.issuer is not set: tokens of any issuer the keys verify are accepted; set it")
	}
	if len(a.Audience) == 0 {
		problems = append(problems, "auth.audience is not set: tokens the issuer minted for other applications are accepted; set it")
	}
	if len(problems) > 0 {
		return checkFail("%s", strings.Join(problems, "; "))
	}
	return checkOK("exp required (always), leeway %s, issuer and audience pinned; the proxy has no maximum token age, so keep the issuer's token lifetime short", a.Leeway)
}

func (c *checker) checkRateLimits(context.Context) checkResult {
	if c.cfg == nil {
		return checkSkip(noConfig)
	}
	l := c.cfg.Limits
	var parts, off []string
	describe := func(name string, v float64, def string) {
		switch {
		case v < 0:
			off = append(off, name)
		case v == 0:
			parts = append(parts, fmt.Sprintf("%s %s (default)", name, def))
		default:
			parts = append(parts, fmt.Sprintf("%s %g", name, v))
		}
	}
	describe("requests_per_second", l.RequestsPerSecond, "20")
	describe("burst", float64(l.Burst), "100")
	describe("max_live_per_user", float64(l.MaxLivePerUser), "32")
	if len(off) > 0 {
		return checkFail("limits.%s negative: the limit is off; set a positive value (or leave it out for the default)", strings.Join(off, ", limits."))
	}
	timeout := "5m0s (default)"
	if l.UpstreamTimeout > 0 {
		timeout = l.UpstreamTimeout.String()
	}
	return checkOK("%s, upstream_timeout %s", strings.Join(parts, ", "), timeout)
}

const noDatabase = "no --database-url or $DATABASE_URL"

// electricPublications returns the publications Electric uses: the one
// --publication names, or every one named electric*, by name, with
// puballtables.
func (c *checker) electricPublications(ctx context.Context, conn *pgx.Conn) ([]string, map[string]bool, error) {
	q := `SELECT pubname, puballtables FROM pg_publication WHERE pubname LIKE 'electric%' ORDER BY pubname`
	var args []any
	if c.publication != "" {
		q, args = `SELECT pubname, puballtables FROM pg_publication WHERE pubname = $1`, []any{c.publication}
	}
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	all := map[string]bool{}
	for rows.Next() {
		var n string
		var a bool
		if err := rows.Scan(&n, &a); err != nil {
			return nil, nil, err
		}
		names = append(names, n)
		all[n] = a
	}
	return names, all, rows.Err()
}

func (c *checker) noPublication() string {
	if c.publication != "" {
		return fmt.Sprintf("there is no publication %s in this database", c.publication)
	}
	return "there is no publication named electric* in this database: start Electric on it, or name Electric's with --publication"
}

func (c *checker) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to Postgres: %w", err) // names user and database, not the password
	}
	return conn, nil
}

// replicationRole returns the role of the one connection that holds a
// replication slot of this database — Electric's, while it runs — or ""
// when there is none or more than one.
func replicationRole(ctx context.Context, conn *pgx.Conn) string {
	var roles []string
	err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(DISTINCT a.usename::text), '{}')
		FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.database = current_database()`).Scan(&roles)
	if err != nil || len(roles) != 1 {
		return ""
	}
	return roles[0]
}

func (c *checker) checkRole(ctx context.Context) checkResult {
	if c.databaseURL == "" {
		return checkSkip(noDatabase)
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return checkSkip("%v", err)
	}
	defer conn.Close(context.Background())
	role := c.role
	if role == "" {
		role = replicationRole(ctx, conn)
	}
	if role == "" {
		pc, _ := pgx.ParseConfig(c.databaseURL)
		role = pc.User
	}
	var super, repl bool
	err = conn.QueryRow(ctx, `SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = $1`, role).Scan(&super, &repl)
	if errors.Is(err, pgx.ErrNoRows) {
		return checkFail("there is no role %q: name Electric's with --electric-role", role)
	}
	if err != nil {
		return checkSkip("reading pg_roles: %v", err)
	}
	if super {
		return checkFail("Electric's role %s is a superuser: give Electric a role with REPLICATION and SELECT on the synced tables only", role)
	}
	pubs, _, err := c.electricPublications(ctx, conn)
	if err != nil {
		return checkSkip("reading pg_publication: %v", err)
	}
	if len(pubs) == 0 {
		return checkOK("%s is not a superuser (%s, so no table grants to check)", role, c.noPublication())
	}
	rows, err := conn.Query(ctx, `
		SELECT format('%I.%I', t.schemaname, t.tablename), array_remove(ARRAY[
			CASE WHEN has_any_column_privilege($1::name, c.oid, 'INSERT') THEN 'INSERT' END,
			CASE WHEN has_any_column_privilege($1::name, c.oid, 'UPDATE') THEN 'UPDATE' END,
			CASE WHEN has_table_privilege($1::name, c.oid, 'DELETE') THEN 'DELETE' END,
			CASE WHEN has_table_privilege($1::name, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END], NULL)
		FROM (SELECT DISTINCT schemaname, tablename FROM pg_publication_tables WHERE pubname = ANY($2::text[])) t
		JOIN pg_namespace n ON n.nspname = t.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
		ORDER BY 1`, role, pubs)
	if err != nil {
		return checkSkip("reading table privileges: %v", err)
	}
	var writable []string
	tables := 0
	for rows.Next() {
		var table string
		var privs []string
		if err := rows.Scan(&table, &privs); err != nil {
			return checkSkip("reading table privileges: %v", err)
		}
		tables++
		if len(privs) > 0 {
			writable = append(writable, fmt.Sprintf("%s on %s", strings.Join(privs, "/"), table))
		}
	}
	if err := rows.Err(); err != nil {
		return checkSkip("reading table privileges: %v", err)
	}
	if len(writable) > 0 {
		return checkFail("Electric's role %s may %s: Electric only reads, so REVOKE INSERT, UPDATE, DELETE, TRUNCATE from it (and, as it then owns no table, publish tables by hand: ELECTRIC_MANUAL_TABLE_PUBLISHING=true)",
			role, strings.Join(writable, ", "))
	}
	note := ""
	if !repl {
		note = "; note: it has no REPLICATION attribute, which Electric needs"
	}
	return checkOK("%s is not a superuser and may not write the %d tables of %s%s", role, tables, strings.Join(pubs, ", "), note)
}

func (c *checker) checkPublication(ctx context.Context) checkResult {
	if c.databaseURL == "" {
		return checkSkip(noDatabase)
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return checkSkip("%v", err)
	}
	defer conn.Close(context.Background())
	pubs, allTables, err := c.electricPublications(ctx, conn)
	if err != nil {
		return checkSkip("reading pg_publication: %v", err)
	}
	if len(pubs) == 0 {
		return checkFail("%s", c.noPublication())
	}
	// Keys are used when their table exists or the proxy serves them.
	var keysUsed bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, keysync.TenantKeysTable).Scan(&keysUsed); err != nil {
		return checkSkip("looking for %s: %v", keysync.TenantKeysTable, err)
	}
	if c.cfg != nil {
		for _, r := range c.cfg.Shapes {
			keysUsed = keysUsed || r.Kind == proxy.KindTenantKeys
		}
	}
	var problems, oks []string
	for _, p := range pubs {
		if allTables[p] {
			problems = append(problems, fmt.Sprintf("%s is FOR ALL TABLES: every table's changes go to Electric, including tables no shape should serve; recreate it FOR TABLE with the synced tables only (and set ELECTRIC_MANUAL_TABLE_PUBLISHING=true)", p))
			continue
		}
		var tables []string
		if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(tablename::text ORDER BY tablename), '{}') FROM pg_publication_tables WHERE pubname = $1`, p).Scan(&tables); err != nil {
			return checkSkip("reading pg_publication_tables: %v", err)
		}
		if keysUsed {
			var missing []string
			for _, t := range []string{keysync.TenantKeysTable, keysync.LogTable} {
				if !slices.Contains(tables, t) {
					missing = append(missing, t)
				}
			}
			if len(missing) > 0 {
				// Electric adds a table to its publication when a shape of
				// it is first requested, unless its tables are published by
				// hand: then the keys would never sync.
				oks = append(oks, fmt.Sprintf("%s does not publish %s yet: Electric adds them on the first request of their shapes (with ELECTRIC_MANUAL_TABLE_PUBLISHING=true, run ALTER PUBLICATION %s ADD TABLE %s)",
					p, strings.Join(missing, ", "), p, strings.Join(missing, ", ")))
				continue
			}
		}
		if len(tables) == 0 {
			oks = append(oks, p+": no tables yet")
		} else {
			oks = append(oks, fmt.Sprintf("%s: %d tables (%s)", p, len(tables), abbrevList(tables, 6)))
		}
	}
	if len(problems) > 0 {
		return checkFail("%s", strings.Join(problems, "; "))
	}
	return checkOK("%s, not FOR ALL TABLES", strings.Join(oks, "; "))
}

func abbrevList(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ", ")
	}
	return strings.Join(s[:n], ", ") + fmt.Sprintf(", … %d more", len(s)-n)
}

func (c *checker) checkTLS(context.Context) checkResult {
	switch {
	case c.behindTLS:
		return checkOK("TLS terminates in front of the proxy (--behind-tls)")
	case c.proxyURL == nil:
		return checkSkip("no --proxy-url (or --behind-tls)")
	case c.proxyURL.Scheme == "https":
		return checkOK("the proxy is served over https")
	case isLoopbackHost(c.proxyURL.Hostname()):
		return checkSkip("the proxy at %s listens on loopback only, out of the network's reach (serve it over https, or behind TLS, once it is not)", shown(c.proxyURL))
	}
	return checkFail("the proxy URL %s is plain http: tokens and key shapes would cross the network in clear; serve it over https, or pass --behind-tls if TLS terminates in front of it", shown(c.proxyURL))
}

// isLoopbackHost reports whether host names the local machine only.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
