package main

import (
	"context"
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

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
)

const tailDecryptUsage = `
Decryption: with --encrypted, the cells of the named columns are opened with
the tenant keysets that --identity's device was granted. tail follows two
shapes live: the device's wrapped keysets (shapeseal_tenant_keys, --keys-url;
by default the same server's /v1/shape, filtered with --user and --device
when given) and the tenants' logs (shapeseal_log, --log-url; by default
--keys-url with its final /keys replaced by /log, as the proxy of shapeseal
dev serves them, or the server's /v1/shape: every tenant's log, or those of
--log-tenants). A keyset is used only if the tenant's log, verified from a
root key pinned with --root (or $SHAPESEAL_ROOT), lists this device and
names that keyset.

A floor file (--floor; by default IDENTITY.floor next to the identity)
remembers how far each log has been seen, so that a log or keyset put back
after a revocation is refused after a restart too; --no-floor keeps it in
memory only. A tenant deleted and created again is refused as a fork until
"shapeseal floor forget" drops it from the floor.

Change messages are printed re-encoded: a cell that opens becomes its
plaintext string; NULL stays null; a cell that does not open becomes an
object

	{"error": "no_key", "message": "keysync: open public.items.title (…): …"}

whose "error" is one of no_key (no key for the cell: not a member, revoked,
or the key did not arrive within --key-wait), auth (tampered with, or moved to
another row, column or tenant), not_encrypted, malformed_cell,
tenant_mismatch or invalid_context (tenant or row-key column missing).
`

// decryptFlags are tail's flags for decryption.
type decryptFlags struct {
	identity     *string
	roots        multiFlag
	floor        *string
	noFloor      *bool
	logURL       *string
	logTenants   *string
	tenantColumn *string
	rowKey       *string
	unboundRows  *bool
	keysURL      *string
	user, device *string
	keyWait      *time.Duration
	encrypted    multiFlag
}

func addDecryptFlags(fs *flag.FlagSet) *decryptFlags {
	d := &decryptFlags{
		identity:     fs.String("identity", "", "age identity file of this device (default $SHAPESEAL_IDENTITY)"),
		tenantColumn: fs.String("tenant-column", "tenant_id", "column holding the tenant id of encrypted tables"),
		rowKey:       fs.String("row-key", "id", "comma-separated columns binding each cell to its row"),
		unboundRows:  fs.Bool("unbound-rows", false, "cells are not bound to their rows (--row-key ignored)"),
		keysURL:      fs.String("keys-url", "", "URL of the tenant-key shape (default: the server's /v1/shape, table shapeseal_tenant_keys)"),
		user:         fs.String("user", "", "user id whose tenant keys to follow (filters the key shape)"),
		device:       fs.String("device", "", "device id whose tenant keys to follow (filters the key shape)"),
		keyWait:      fs.Duration("key-wait", keysync.DefaultKeyWait, "how long to wait for a key a cell names before printing no_key"),
	}
	fs.Var(&d.encrypted, "encrypted", "TABLE:COLUMN[,COLUMN…] encrypted columns to open (repeatable)")
	d.floor = fs.String("floor", "", "file keeping how far each tenant's log was seen, across runs (default: IDENTITY.floor next to --identity; created 0600 if missing)")
	d.noFloor = fs.Bool("no-floor", false, "keep the floor in memory only (a restarted tail can then be rolled back)")
	d.logURL = fs.String("log-url", "", "URL of the tenant-log shape (default: --keys-url ending in /log instead of /keys; without --keys-url, the server's /v1/shape, table shapeseal_log)")
	d.logTenants = fs.String("log-tenants", "", "from Electric directly (a /v1/shape log URL), follow only the logs of these tenants (comma-separated; default every tenant's)")
	fs.Var(&d.roots, "root", "pinned root public key ssvk1… the tenant logs are verified against (repeatable or comma-separated; default $SHAPESEAL_ROOT)")
	return d
}

// specs returns the table specs of the flags.
func (d *decryptFlags) specs() ([]keysync.TableSpec, error) {
	var specs []keysync.TableSpec
	for _, e := range d.encrypted {
		table, cols, ok := strings.Cut(e, ":")
		s := keysync.TableSpec{Table: strings.TrimSpace(table), TenantColumn: *d.tenantColumn, UnboundRows: *d.unboundRows}
		for c := range strings.SplitSeq(cols, ",") {
			if c = strings.TrimSpace(c); c != "" {
				s.Columns = append(s.Columns, c)
			}
		}
		if !ok || s.Table == "" || len(s.Columns) == 0 {
			return nil, fmt.Errorf("--encrypted %q: want TABLE:COLUMN[,COLUMN…]", e)
		}
		if !s.UnboundRows {
			for c := range strings.SplitSeq(*d.rowKey, ",") {
				if c = strings.TrimSpace(c); c != "" {
					s.RowKey = append(s.RowKey, c)
				}
			}
		}
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("--encrypted %q: %w", e, err)
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// keyShapeOptions returns the stream options of the key shape: the same
// server as shape (its /v1/shape and secret) unless --keys-url is set, with
// the same headers and token.
func (d *decryptFlags) keyShapeOptions(shape *url.URL, secret string, opts client.Options) (client.Options, error) {
	var u *url.URL
	if *d.keysURL == "" {
		u = &url.URL{Scheme: shape.Scheme, Host: shape.Host, Path: "/v1/shape"}
	} else {
		var err error
		if u, err = url.Parse(*d.keysURL); err != nil {
			return client.Options{}, fmt.Errorf("--keys-url: %w", err)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/shape"
		}
	}
	direct := strings.HasSuffix(u.Path, "/v1/shape")
	if secret != "" && direct {
		q := u.Query()
		q.Set("secret", secret)
		u.RawQuery = q.Encode()
	}
	ko := keysync.KeyShapeOptions(u.String(), *d.user, *d.device)
	switch {
	case !direct:
		// A proxy pins the table and filters to the token's user and device.
		ko.Params = client.Params{}
	case *d.user == "" && *d.device == "":
		ko.Params.Where, ko.Params.Params = "", nil
	case *d.user == "" || *d.device == "":
		return client.Options{}, usagef("--user and --device go together")
	}
	ko.Header = opts.Header.Clone()
	ko.TokenSource = opts.TokenSource
	ko.Logger = opts.Logger
	return ko, nil
}

// logShapeOptions returns the stream options of the log shape: --log-url;
// else --keys-url with /keys replaced by /log (a proxy's rules), or the
// same /v1/shape; else the server's /v1/shape. From Electric it follows the
// logs of --log-tenants, or of every tenant; a proxy filters it to the
// token's tenants.
func (d *decryptFlags) logShapeOptions(shape *url.URL, secret string, opts client.Options) (client.Options, error) {
	var u *url.URL
	switch {
	case *d.logURL != "":
		var err error
		if u, err = url.Parse(*d.logURL); err != nil {
			return client.Options{}, fmt.Errorf("--log-url: %w", err)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/shape"
		}
	case *d.keysURL == "":
		u = &url.URL{Scheme: shape.Scheme, Host: shape.Host, Path: "/v1/shape"}
	default:
		k, err := url.Parse(*d.keysURL)
		if err != nil {
			return client.Options{}, fmt.Errorf("--keys-url: %w", err)
		}
		u = k
		switch p := strings.TrimSuffix(k.Path, "/"); {
		case p == "" || strings.HasSuffix(p, "/v1/shape"):
			u.Path = "/v1/shape"
			if p != "" {
				u.Path = p
			}
		case strings.HasSuffix(p, "/keys"):
			u.Path = strings.TrimSuffix(p, "/keys") + "/log"
		default:
			return client.Options{}, fmt.Errorf("--keys-url %s does not end in /keys: pass --log-url, the URL of the tenant-log shape (shapeseal_log, filtered to the user)", *d.keysURL)
		}
	}
	direct := strings.HasSuffix(u.Path, "/v1/shape")
	if secret != "" && direct {
		q := u.Query()
		q.Set("secret", secret)
		u.RawQuery = q.Encode()
	}
	tenants := splitList(*d.logTenants)
	if len(tenants) > 0 && !direct {
		return client.Options{}, fmt.Errorf("--log-tenants filters a log shape from Electric (/v1/shape), not %s, which filters it itself", u.Path)
	}
	lo := keysync.LogShapeOptions(u.String(), tenants...)
	if !direct {
		// A proxy pins the table and filters to the token's tenants.
		lo.Params = client.Params{}
	}
	lo.Header = opts.Header.Clone()
	lo.TokenSource = opts.TokenSource
	lo.Logger = opts.Logger
	return lo, nil
}

// decryptor is what tail needs while decrypting: the transform, and the
// keyring's failure, if it failed.
type decryptor struct {
	dec       *keysync.Decrypter
	ring      *keysync.Keyring
	done      chan struct{}
	runErr    error
	identity  string // the identity file
	recipient string // its recipient
	warned    bool   // warnNoKeys has warned
}

// warnNoKeys says once, on stderr, that the keyring holds no key at all
// when a cell of m failed for want of one: the device was likely granted
// nothing, or tail follows another device's keys.
func (d *decryptor) warnNoKeys(m client.Message, stderr io.Writer) {
	if d.warned || d.ring.Tenants() > 0 {
		return
	}
	for _, e := range keysync.CellErrors(m.Value) {
		if e.Code() == "no_key" {
			d.warned = true
			fmt.Fprintf(stderr, "shapeseal tail: warning: the keyring holds no key for any tenant: no tenant's key shape row is wrapped to %s (recipient %s) and listed by the tenant's log; certify this recipient (shapeseal device add) and grant the user the tenant (shapeseal grant), or check --keys-url, --user and --device\n",
				d.identity, abbreviate(d.recipient))
			return
		}
	}
}

// err returns the keyring's error once it has stopped.
func (d *decryptor) err() error {
	select {
	case <-d.done:
		if d.runErr != nil {
			return fmt.Errorf("keyring (key and log shapes): %w", d.runErr)
		}
		return errors.New("keyring (key and log shapes): stopped")
	default:
		return nil
	}
}

func (d *decryptor) close() {
	d.ring.Close()
	<-d.done
}

// start loads the identity, starts the keyring and waits until it is
// up to date.
func (d *decryptFlags) start(ctx context.Context, shape *url.URL, secret string, opts client.Options, verbose bool, stderr io.Writer) (*decryptor, error) {
	specs, err := d.specs()
	if err != nil {
		return nil, err
	}
	path, id, recipient, err := d.loadIdentity()
	if err != nil {
		return nil, err
	}
	roots, err := d.rootKeys()
	if err != nil {
		return nil, err
	}
	floor, floorPath, err := d.openFloor(path)
	if err != nil {
		return nil, err
	}
	ko, err := d.keyShapeOptions(shape, secret, opts)
	if err != nil {
		return nil, err
	}
	lo, err := d.logShapeOptions(shape, secret, opts)
	if err != nil {
		return nil, err
	}
	var contact firstContact
	contact.apply(&ko)
	contact.apply(&lo)
	var mu sync.Mutex
	var ring *keysync.Keyring
	ring, err = keysync.NewKeyring(keysync.KeyringOptions{
		Stream:   ko,
		Log:      lo,
		Identity: id,
		Roots:    roots,
		Floor:    floor,
		KeyWait:  *d.keyWait,
		OnRowError: func(e *keysync.KeyRowError) {
			// Unfiltered, the key shape holds rows of other devices, for
			// tenants whose logs do not list this one: news only for a
			// tenant whose keys the ring holds (a revocation).
			if !verbose && *d.device == "" && (errors.Is(e, keysync.ErrWrongIdentity) ||
				errors.Is(e, keysync.ErrNotMember) && ring.Keyset(e.Tenant) == nil) {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(stderr, "shapeseal tail: %v\n", forkHint(e, floorPath))
		},
	})
	if err != nil {
		return nil, err
	}
	dec, err := keysync.NewDecrypter(ring, specs...)
	if err != nil {
		return nil, err
	}
	r := &decryptor{dec: dec, ring: ring, done: make(chan struct{}), identity: path, recipient: recipient}
	go func() {
		defer close(r.done)
		r.runErr = ring.Run(ctx)
	}()
	if err := d.waitReady(ctx, r, &contact, ko.URL, lo.URL); err != nil {
		return nil, err
	}
	return r, nil
}

// loadIdentity loads --identity (or $SHAPESEAL_IDENTITY) and returns its
// path and recipient too.
func (d *decryptFlags) loadIdentity() (path string, id age.Identity, recipient string, err error) {
	path = *d.identity
	if path == "" {
		path = os.Getenv("SHAPESEAL_IDENTITY")
	}
	if path == "" {
		return "", nil, "", usagef("--encrypted needs --identity (or $SHAPESEAL_IDENTITY)")
	}
	if id, err = keysync.LoadIdentityFile(path); err != nil {
		return "", nil, "", fmt.Errorf("--identity: %w", err)
	}
	if recipient, err = keysync.RecipientOf(id); err != nil {
		return "", nil, "", fmt.Errorf("--identity: %w", err)
	}
	return path, id, recipient, nil
}

// rootKeys returns the pinned root keys of --root (or $SHAPESEAL_ROOT):
// at least one.
func (d *decryptFlags) rootKeys() ([]keysync.VerifyKey, error) {
	list := strings.Join(d.roots, ",")
	if list == "" {
		list = os.Getenv("SHAPESEAL_ROOT")
	}
	roots, err := keysync.ParseVerifyKeys(list)
	if err != nil {
		return nil, fmt.Errorf("--root: %w", err)
	}
	if len(roots) == 0 {
		return nil, errors.New(`--encrypted needs --root ssvk1… (or $SHAPESEAL_ROOT): the root public key the tenants' logs are signed from, as "shapeseal signkey" printed it (shapeseal dev prints it as "root")`)
	}
	return roots, nil
}

// openFloor opens the floor of --floor (by default next to the identity
// file at identityPath), or with --no-floor one in memory, and returns its
// path ("" in memory).
func (d *decryptFlags) openFloor(identityPath string) (floor keysync.Floor, path string, err error) {
	switch {
	case *d.noFloor && *d.floor != "":
		return nil, "", usagef("--floor and --no-floor are exclusive")
	case *d.noFloor:
		return keysync.NewMemoryFloor(), "", nil
	}
	path = *d.floor
	if path == "" {
		path = keysync.DefaultFloorPath(identityPath)
	}
	ff, err := keysync.OpenFileFloor(path)
	if err != nil {
		return nil, "", fmt.Errorf("--floor: %w", err)
	}
	return ff, path, nil
}

// waitReady waits up to 30 s for r's keyring to be up to date; on failure
// it closes r and explains why, with the key and log shapes' URLs.
func (d *decryptFlags) waitReady(ctx context.Context, r *decryptor, contact *firstContact, keysURL, logURL string) error {
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	readyErr := make(chan error, 1)
	go func() { readyErr <- r.ring.Ready(wait) }()
	var err error
	select {
	case err = <-readyErr:
	case <-r.done:
		err = r.err()
	}
	if err != nil {
		r.close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if e := r.err(); e != nil && !errors.Is(err, context.DeadlineExceeded) {
			return d.explain(contact.wrap(e), keysURL, logURL)
		}
		return fmt.Errorf("key and log shapes not up to date: %w", err)
	}
	contact.succeeded()
	return nil
}

// explain adds to a keyring error what to do when a key or log shape is
// not where tail looked for it (a 404).
func (d *decryptFlags) explain(err error, keysURL, logURL string) error {
	he, ok := errors.AsType[*client.HTTPError](err)
	if !ok || he.StatusCode != http.StatusNotFound {
		return err
	}
	at := func(u string) bool {
		base, _, _ := strings.Cut(u, "?")
		got, _, _ := strings.Cut(he.URL, "?")
		return base == got
	}
	switch {
	case at(keysURL) && *d.keysURL == "":
		return fmt.Errorf("the server has no tenant-key shape at %s (404): pass --keys-url, the URL of the tenant-key shape (behind shapeseal dev's proxy: PROXY_URL/v1/shapes/keys): %w", redactQuery(keysURL), err)
	case at(keysURL):
		return fmt.Errorf("no tenant-key shape at --keys-url %s (404): %w", redactQuery(keysURL), err)
	case at(logURL) && *d.logURL == "":
		return fmt.Errorf("the server has no tenant-log shape at %s (404): pass --log-url, the URL of the tenant-log shape (behind shapeseal dev's proxy: PROXY_URL/v1/shapes/log): %w", redactQuery(logURL), err)
	case at(logURL):
		return fmt.Errorf("no tenant-log shape at --log-url %s (404): %w", redactQuery(logURL), err)
	}
	return err
}

// redactQuery returns u without its query, which may hold a secret.
func redactQuery(u string) string {
	base, _, _ := strings.Cut(u, "?")
	return base
}

// abbreviate shortens a long recipient (a post-quantum one is about 2,000
// characters) to its start and end.
func abbreviate(s string) string {
	if len(s) <= 48 {
		return s
	}
	return s[:32] + "…" + s[len(s)-12:]
}
