package keysync

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// bigTenant is a tenant of n members with one certified hybrid device each,
// granted one by one, so that its log has n+1 entries.
type bigTenant struct {
	db    *pgxpool.Pool
	admin *Admin
	users []string
}

func newBigTenant(b *testing.B, n int) *bigTenant {
	b.Helper()
	ctx := context.Background()
	url := pgtest.NewDB(b)
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	if err := ApplySchema(ctx, db); err != nil {
		b.Fatal(err)
	}
	kek := newLocalKEK(b)
	a := &Admin{DB: db, Roots: testSigners, Key: testSigner, KEKs: UseKEK(kek)}
	if _, err := a.CreateTenant(ctx, kek, "big"); err != nil {
		b.Fatal(err)
	}
	t := &bigTenant{db: db, admin: a}
	start := time.Now()
	for i := range n {
		id, err := GenerateIdentity()
		if err != nil {
			b.Fatal(err)
		}
		rcpt, _ := RecipientOf(id)
		user := fmt.Sprintf("user%04d", i)
		if err := a.CertifyDevice(ctx, user, "d", rcpt); err != nil {
			b.Fatal(err)
		}
		if _, err := a.Grant(ctx, "big", user); err != nil {
			b.Fatal(err)
		}
		t.users = append(t.users, user)
	}
	b.Logf("%d members certified and granted in %v", n, time.Since(start).Round(time.Millisecond))
	return t
}

// BenchmarkAdmin1000 measures, on a tenant of 1,000 member devices (a log
// of 1,001 entries), the wall time of a rotation and of a revocation (each
// re-wraps the keyset to every remaining device, hybrid age, and signs one
// log entry), and of verifying the whole log from scratch, which is what an
// administrator that starts afresh pays once before its first change.
func BenchmarkAdmin1000(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a tenant of 1,000 devices")
	}
	const n = 1000
	t := newBigTenant(b, n)
	ctx := context.Background()
	b.Run("rotate", func(b *testing.B) {
		for b.Loop() {
			if _, err := t.admin.Rotate(ctx, "big"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("revoke", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := t.admin.Revoke(ctx, "big", t.users[i%len(t.users)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("verify-log", func(b *testing.B) {
		for b.Loop() {
			if _, err := LoadState(ctx, t.db, testSigners, "big", nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
