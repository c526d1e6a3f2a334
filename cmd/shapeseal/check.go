package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

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
	f, err := parseCheckFlags(args, stdout)
	var c *checker
	if err == nil {
		c, err = newChecker(f, getenv)
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "shapeseal check: %v\nRun \"shapeseal check --help\" for usage.\n", err)
		return 2
	}
	rows := c.run(ctx)
	printCheckRows(stdout, rows, f.asJSON)
	for _, r := range rows {
		if r.Status == "FAIL" {
			return 1
		}
	}
	return 0
}

// checkFlags are check's flags as given.
type checkFlags struct {
	electricURL, databaseURL, proxyConfig, proxyURL string
	secret, role, publication, table                string
	behindTLS, asJSON                               bool
}

// parseCheckFlags parses check's flags: -h prints the usage to stdout and
// returns flag.ErrHelp; anything else that fails is a misuse.
func parseCheckFlags(args []string, stdout io.Writer) (*checkFlags, error) {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), checkUsage)
		fs.PrintDefaults()
	}
	var f checkFlags
	fs.StringVar(&f.electricURL, "electric-url", "", "Electric's base URL, as the proxy reaches it (default $ELECTRIC_URL, else the proxy config's upstream)")
	fs.StringVar(&f.databaseURL, "database-url", "", "Postgres URL for the electric-role and publication rows (default $DATABASE_URL)")
	fs.StringVar(&f.proxyConfig, "proxy-config", "", "the proxy's YAML config file (shapeseal proxy --config)")
	fs.StringVar(&f.proxyURL, "proxy-url", "", "the proxy's URL, as clients reach it")
	fs.StringVar(&f.secret, "electric-secret", "", "Electric's secret, to check that Electric accepts it (default $ELECTRIC_SECRET; prefer the variable)")
	fs.StringVar(&f.role, "electric-role", "", "the Postgres role Electric connects as (default: the role holding this database's replication slot, else the --database-url user)")
	fs.StringVar(&f.publication, "publication", "", "the publication Electric uses (default: every publication named electric*)")
	fs.BoolVar(&f.behindTLS, "behind-tls", false, "TLS terminates in front of the proxy (a load balancer or ingress)")
	fs.StringVar(&f.table, "table", "", "table of the electric-secret probe (default: one that does not exist, so no shape is created)")
	fs.BoolVar(&f.asJSON, "json", false, "print a JSON array of {row, status, detail}")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("no arguments are taken (got %q)", fs.Arg(0))
	}
	return &f, nil
}

// newChecker makes the checker of f, with the defaults from getenv and the
// proxy config.
func newChecker(f *checkFlags, getenv func(string) string) (*checker, error) {
	c := &checker{
		databaseURL: f.databaseURL, secret: f.secret, role: f.role, publication: f.publication,
		behindTLS: f.behindTLS, table: f.table,
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
	if f.proxyConfig != "" {
		cfg, err := proxy.LoadConfig(f.proxyConfig, checkConfigEnv(getenv))
		if err != nil {
			return nil, fmt.Errorf("--proxy-config: %v", err)
		}
		c.cfg = &cfg
	}
	electricURL := f.electricURL
	if electricURL == "" && c.cfg != nil {
		electricURL = c.cfg.Upstream // with $ELECTRIC_URL applied
	}
	if electricURL == "" {
		electricURL = getenv("ELECTRIC_URL")
	}
	if electricURL == "" {
		return nil, errors.New("--electric-url is required (or $ELECTRIC_URL, or a --proxy-config with an upstream)")
	}
	var err error
	if c.electric, err = parseCheckURL(electricURL); err != nil {
		return nil, fmt.Errorf("--electric-url: %v", err)
	}
	if f.proxyURL != "" {
		if c.proxyURL, err = parseCheckURL(f.proxyURL); err != nil {
			return nil, fmt.Errorf("--proxy-url: %v", err)
		}
	}
	if c.databaseURL != "" {
		if _, err := pgx.ParseConfig(c.databaseURL); err != nil {
			return nil, errors.New("--database-url: cannot parse it") // the error may quote the password
		}
	}
	return c, nil
}

// printCheckRows prints the report: a line per row, or with asJSON a JSON
// array.
func printCheckRows(stdout io.Writer, rows []checkRow, asJSON bool) {
	if asJSON {
		b, _ := json.MarshalIndent(rows, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return
	}
	w := 0
	for _, r := range rows {
		w = max(w, len(r.Row)+1)
	}
	for _, r := range rows {
		fmt.Fprintf(stdout, "%-4s %-*s %s\n", r.Status, w, r.Row+":", r.Detail)
	}
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
