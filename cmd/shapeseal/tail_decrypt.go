package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
)

const tailDecryptUsage = `
Decryption: with --encrypted, the cells of the named columns are opened with
the tenant keysets that --identity's device was granted, which tail follows
live from the shapeseal_tenant_keys shape (--keys-url; by default the same
server's /v1/shape, filtered with --user and --device when given). A keyset
is used only if it is signed by a signer given with --signer (or
$SHAPESEAL_SIGNERS): the "ssvk1…" key that shapeseal init --kek and
shapeseal tenant create print. Change
messages are then printed re-encoded: a cell that opens becomes its plaintext
string; NULL stays null; a cell that does not open becomes an object

	{"error": "no_key", "message": "keysync: open public.items.title (…): …"}

whose "error" is one of no_key (no key for the cell: not a member, revoked,
or the key did not arrive within --key-wait), auth (tampered with, or moved to
another row, column or tenant), not_encrypted, malformed_cell,
tenant_mismatch or invalid_context (tenant or row-key column missing).
`

// decryptFlags are tail's flags for decryption.
type decryptFlags struct {
	identity     *string
	signers      multiFlag
	floor        *string
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
	d.floor = fs.String("floor", "", "file keeping the newest keyset generation per tenant across runs, to refuse older keysets put back (created 0600 if missing)")
	fs.Var(&d.signers, "signer", "trusted signer key ssvk1… of the key administrators (repeatable; default $SHAPESEAL_SIGNERS)")
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
		return client.Options{}, errors.New("--user and --device go together")
	}
	ko.Header = opts.Header.Clone()
	ko.TokenSource = opts.TokenSource
	ko.Logger = opts.Logger
	return ko, nil
}

// decryptor is what tail needs while decrypting: the transform, and the
// keyring's failure, if it failed.
type decryptor struct {
	dec    *keysync.Decrypter
	ring   *keysync.Keyring
	done   chan struct{}
	runErr error
}

// err returns the keyring's error once it has stopped.
func (d *decryptor) err() error {
	select {
	case <-d.done:
		if d.runErr != nil {
			return fmt.Errorf("tenant-key shape: %w", d.runErr)
		}
		return errors.New("tenant-key shape: stopped")
	default:
		return nil
	}
}

func (d *decryptor) close() {
	d.ring.Close()
	<-d.done
}

// startDecrypt loads the identity, starts the keyring and waits until it is
// up to date.
func (d *decryptFlags) start(ctx context.Context, shape *url.URL, secret string, opts client.Options, verbose bool, stderr io.Writer) (*decryptor, error) {
	specs, err := d.specs()
	if err != nil {
		return nil, err
	}
	path := *d.identity
	if path == "" {
		path = os.Getenv("SHAPESEAL_IDENTITY")
	}
	if path == "" {
		return nil, errors.New("--encrypted needs --identity (or $SHAPESEAL_IDENTITY)")
	}
	id, err := keysync.LoadIdentityFile(path)
	if err != nil {
		return nil, fmt.Errorf("--identity: %w", err)
	}
	list := strings.Join(d.signers, ",")
	if list == "" {
		list = os.Getenv("SHAPESEAL_SIGNERS")
	}
	signers, err := keysync.ParseVerifyKeys(list)
	if err != nil {
		return nil, fmt.Errorf("--signer: %w", err)
	}
	if len(signers) == 0 {
		return nil, errors.New("--encrypted needs --signer ssvk1… (or $SHAPESEAL_SIGNERS): the key that signs tenant keysets, printed by shapeseal init --kek")
	}
	var floor keysync.GenerationFloor
	if *d.floor != "" {
		if floor, err = keysync.OpenFileFloor(*d.floor); err != nil {
			return nil, fmt.Errorf("--floor: %w", err)
		}
	}
	ko, err := d.keyShapeOptions(shape, secret, opts)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	ring, err := keysync.NewKeyring(keysync.KeyringOptions{
		Stream:   ko,
		Identity: id,
		Signers:  signers,
		Floor:    floor,
		KeyWait:  *d.keyWait,
		OnRowError: func(e *keysync.KeyRowError) {
			// Unfiltered, the key shape holds rows of other devices.
			if errors.Is(e, keysync.ErrWrongIdentity) && *d.device == "" && !verbose {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(stderr, "shapeseal tail: %v\n", e)
		},
	})
	if err != nil {
		return nil, err
	}
	dec, err := keysync.NewDecrypter(ring, specs...)
	if err != nil {
		return nil, err
	}
	r := &decryptor{dec: dec, ring: ring, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.runErr = ring.Run(ctx)
	}()
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	readyErr := make(chan error, 1)
	go func() { readyErr <- ring.Ready(wait) }()
	select {
	case err = <-readyErr:
	case <-r.done:
		err = r.err()
	}
	if err != nil {
		r.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if e := r.err(); e != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, e
		}
		return nil, fmt.Errorf("tenant-key shape not up to date: %w", err)
	}
	return r, nil
}
