package proxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
)

// TestKeyringThroughProxy: keysync's Keyring follows the tenant_keys shape
// through the proxy, unchanged, receives live grants, and never sees a key
// row of another user or device.
func TestKeyringThroughProxy(t *testing.T) {
	t.Parallel()
	e := newEnvSQL(t, keysync.Schema()+`
CREATE TABLE items (id int PRIMARY KEY, tenant_id text NOT NULL, owner text, title text, note text);
CREATE TABLE public_news (id int PRIMARY KEY, body text);`, nil)
	acme, err := keysync.NewKeyset("acme")
	if err != nil {
		t.Fatal(err)
	}
	globex, _ := keysync.NewKeyset("globex")
	alice, _ := keysync.GenerateIdentity()
	alicePhone, _ := keysync.GenerateIdentity()
	bob, _ := keysync.GenerateIdentity()
	register := func(user, device string, id age.Identity) {
		rcpt, err := keysync.RecipientOf(id)
		if err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, e.db, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)`, user, device, rcpt)
	}
	register("alice", "laptop", alice)
	register("alice", "phone", alicePhone)
	register("bob", "pc", bob)
	grant := func(ks *keysync.Keyset, user, device string, wrapped []byte) {
		pgtest.Exec(t, e.db, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ($1, $2, $3, $4, $5)`,
			ks.Tenant(), user, device, int64(ks.Generation()), wrapped)
	}
	signer, err := keysync.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	w1, err := keysync.Wrap(acme, signer, alice.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	grant(acme, "alice", "laptop", w1)
	w2, _ := keysync.Wrap(acme, signer, alicePhone.Recipient().String())
	grant(acme, "alice", "phone", w2) // same user, other device: filtered out
	w3, _ := keysync.Wrap(globex, signer, bob.Recipient().String())
	grant(globex, "bob", "pc", w3) // another user

	var mu sync.Mutex
	var refused []*keysync.KeyRowError
	ring, err := keysync.NewKeyring(keysync.KeyringOptions{
		Stream: client.Options{URL: e.url + "/v1/shapes/keys", Live: true,
			TokenSource: client.StaticToken(token(t, "alice", map[string]any{"device_id": "laptop"}))},
		Identity: alice,
		Signers:  []keysync.VerifyKey{signer.VerifyKey()},
		OnRowError: func(e *keysync.KeyRowError) {
			mu.Lock()
			refused = append(refused, e)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ring.Run(context.Background()) }()
	defer func() {
		ring.Close()
		<-done
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := ring.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if ring.Keyset("acme") == nil || ring.Tenants() != 1 {
		t.Fatalf("keyring holds %d tenants", ring.Tenants())
	}
	// A live grant arrives through the proxy.
	w4, _ := keysync.Wrap(globex, signer, alice.Recipient().String())
	grant(globex, "alice", "laptop", w4)
	for ring.Keyset("globex") == nil {
		if ctx.Err() != nil {
			t.Fatal("live grant not received")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) > 0 {
		t.Fatalf("refused rows (another device's key reached the ring): %v", refused)
	}
}
