package keysync

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// The methods the keyring's tests (keyring_test.go, keyring_trust_test.go,
// keyring_regrant_test.go, keyring_serving_test.go) add to trustEnv
// (trustenv_test.go), and the checks they share.

// ringSpec is the items table of trustEnv, with encrypted title and body.
var ringSpec = TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// itemSeq numbers the items rows of every test, so ids never collide.
var itemSeq atomic.Int64

// exec runs sql on the env's database.
func (e *trustEnv) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatal(err)
	}
}

// item inserts an items row of ks's tenant whose title and body are sealed
// with ks, and returns its id.
func (e *trustEnv) item(ks *Keyset, title, body string) string {
	e.t.Helper()
	id := fmt.Sprintf("00000000-0000-4000-8000-%012x", itemSeq.Add(1))
	row := map[string]any{"id": id, "tenant_id": ks.Tenant(), "title": title, "body": body}
	if err := ringSpec.SealRow(ks, row); err != nil {
		e.t.Fatal(err)
	}
	e.exec(`INSERT INTO items (id, tenant_id, title, body) VALUES ($1, $2, $3, $4)`, id, ks.Tenant(), row["title"], row["body"])
	return id
}

// cellOf returns the cell in column col of items row id.
func (e *trustEnv) cellOf(id, col string) string {
	e.t.Helper()
	var s string
	if err := e.db.QueryRow(context.Background(), `SELECT `+col+` FROM items WHERE id = $1`, id).Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// cellContext returns the place of column col of items row id.
func cellContext(tenant, id, col string) CellContext {
	return CellContext{Table: "public.items", Column: col, Tenant: tenant, RowKey: []string{id}}
}

// keyRow returns the generation and wrapped payload of a tenant-key row.
func (e *trustEnv) keyRow(tenant, user, device string) (uint64, []byte) {
	e.t.Helper()
	var gen int64
	var wrapped []byte
	err := e.db.QueryRow(context.Background(), `SELECT generation, wrapped FROM shapeseal_tenant_keys
		WHERE tenant_id = $1 AND user_id = $2 AND device_id = $3`, tenant, user, device).Scan(&gen, &wrapped)
	if err != nil {
		e.t.Fatalf("tenant-key row %s/%s/%s: %v", tenant, user, device, err)
	}
	return uint64(gen), wrapped
}

// putRow writes a tenant-key row directly, as whoever can write the table
// can: upserted, whatever the generation held. With a recipient, it first
// inserts a device row with it if there is none.
func (e *trustEnv) putRow(tenant, user, device, recipient string, gen uint64, wrapped []byte) {
	e.t.Helper()
	if recipient != "" {
		e.exec(`INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, device_id) DO NOTHING`, user, device, recipient)
	}
	e.exec(`INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE SET generation = excluded.generation, wrapped = excluded.wrapped`,
		tenant, user, device, int64(gen), wrapped)
}

// wrapTo wraps ks to id's recipient, signed by signer.
func (e *trustEnv) wrapTo(ks *Keyset, signer chain.Signer, id *age.HybridIdentity) []byte {
	e.t.Helper()
	w, err := Wrap(context.Background(), ks, signer, id.Recipient().String())
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

// current returns tenant's current keyset, as the log names it, from
// shapeseal_keysets.
func (e *trustEnv) current(tenant string) *Keyset {
	e.t.Helper()
	ctx := context.Background()
	st, err := e.admin.State(ctx, tenant)
	if err != nil {
		e.t.Fatal(err)
	}
	ks, err := LoadKeyset(ctx, e.db, st, UseKEK(e.kek))
	if err != nil {
		e.t.Fatal(err)
	}
	return ks
}

// ringOptions returns the options e.ring uses for user's device (a nil
// floor is a fresh MemoryFloor), reporting refused rows to errs.
func (e *trustEnv) ringOptions(user, device string, id age.Identity, floor Floor, errs *rowErrors) KeyringOptions {
	if floor == nil {
		floor = NewMemoryFloor()
	}
	return KeyringOptions{
		Stream:     KeyShapeOptions(e.srv.URL+"/v1/shape", user, device),
		Log:        LogShapeOptions(e.srv.URL + "/v1/shape"),
		Identity:   id,
		Roots:      e.roots,
		Floor:      floor,
		KeyWait:    3 * time.Second,
		OnRowError: errs.add,
	}
}

// startRing runs a keyring with opts until the test ends and waits until
// it is ready. stop closes it and waits for Run to return.
func (e *trustEnv) startRing(opts KeyringOptions) (r *Keyring, stop func()) {
	e.t.Helper()
	r, err := NewKeyring(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		r.Close()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	}
	e.t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Ready(ctx); err != nil {
		e.t.Fatal(err)
	}
	return r, stop
}

// items follows the items shape live through a decrypter on r and sends
// the value of every change message.
func (e *trustEnv) items(r *Keyring) <-chan client.Row {
	e.t.Helper()
	dec, err := NewDecrypter(r, ringSpec)
	if err != nil {
		e.t.Fatal(err)
	}
	return followShape(e, client.Options{URL: e.srv.URL + "/v1/shape", Params: client.Params{Table: "items"}, Transform: dec.Transform},
		func(m client.Message) client.Row { return m.Value })
}

// published returns the ring's current published version, for
// waitPublished.
func published(r *Keyring) *ringState { return r.state.Load() }

// waitPublished waits until r has published a version after before: the
// ring has decided again, on what its shapes delivered since.
func waitPublished(t *testing.T, r *Keyring, before *ringState) {
	t.Helper()
	select {
	case <-before.changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the keyring did not change within 10s")
	}
}

// refusal waits for a row error wrapping target and checks that it is
// about tenant.
func (r *rowErrors) refusal(t *testing.T, target error, tenant string) *KeyRowError {
	t.Helper()
	re := r.waitFor(t, target)
	if re.Tenant != tenant {
		t.Errorf("refusal %v: tenant %q, want %q", re, re.Tenant, tenant)
	}
	return re
}

// holds checks that r holds tenant's keyset want (same generation and
// commitment), or none if want is nil.
func holds(t *testing.T, r *Keyring, tenant string, want *Keyset) {
	t.Helper()
	got := r.Keyset(tenant)
	switch {
	case want == nil && got != nil:
		t.Fatalf("the ring holds %v for tenant %q, want none", got, tenant)
	case want == nil:
	case got == nil:
		t.Fatalf("the ring holds no keyset for tenant %q, want %v", tenant, want)
	case got.Generation() != want.Generation() || got.Commitment() != want.Commitment():
		t.Fatalf("the ring holds %v for tenant %q, want %v", got, tenant, want)
	}
}

// waitMatch waits for a row error that ok accepts.
func (r *rowErrors) waitMatch(t *testing.T, what string, ok func(*KeyRowError) bool) *KeyRowError {
	t.Helper()
	for range 400 {
		for _, e := range r.all() {
			if ok(e) {
				return e
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("no row error %s; got %v", what, r.all())
	return nil
}

// adminReports returns what the env's Admin reported so far.
func (e *trustEnv) adminReports() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.reported...)
}

// follow follows a shape live with opts and sends its change messages.
func (e *trustEnv) follow(opts client.Options) <-chan client.Message {
	e.t.Helper()
	return followShape(e, opts, func(m client.Message) client.Message { return m })
}

// followShape follows a shape live with opts and sends what of each change
// message it wants, until the test ends.
func followShape[T any](e *trustEnv, opts client.Options, want func(client.Message) T) <-chan T {
	e.t.Helper()
	opts.Live = true
	s, err := client.New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan T, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range s.Messages(ctx) {
			if err != nil {
				return
			}
			if m.IsChange() {
				out <- want(m)
			}
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done; s.Close() })
	return out
}

// onlyGenuine fails t if r holds a keyset for genuine's tenant other than
// genuine.
func onlyGenuine(t *testing.T, r *Keyring, genuine *Keyset) {
	t.Helper()
	if ks := r.Keyset(genuine.Tenant()); ks != nil && (ks.Generation() != genuine.Generation() || ks.Commitment() != genuine.Commitment()) {
		t.Fatalf("the ring holds %v for tenant %q, want %v or none", ks, genuine.Tenant(), genuine)
	}
}

// holdsNow reports whether r holds ks for its tenant.
func holdsNow(r *Keyring, ks *Keyset) bool {
	got := r.Keyset(ks.Tenant())
	return got != nil && got.Generation() == ks.Generation() && got.Commitment() == ks.Commitment()
}

// notAdopted fails t if r holds the keyset bad for its tenant.
func notAdopted(t *testing.T, r *Keyring, bad *Keyset) {
	t.Helper()
	if ks := r.Keyset(bad.Tenant()); ks != nil && ks.Commitment() == bad.Commitment() {
		t.Fatalf("the ring adopted the forged keyset %v", ks)
	}
}
