package chain

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"
)

// seededKey returns a deterministic key, for tests and vectors.
func seededKey(t testing.TB, name string) *PrivateKey {
	t.Helper()
	seed := sha256.Sum256([]byte("shapeseal test key " + name))
	k, err := NewPrivateKey(seed[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// log is a test log under construction.
type log struct {
	t       testing.TB
	tenant  string
	roots   []PublicKey
	entries [][]byte
	state   *State
}

func newLog(t testing.TB, tenant string, roots ...*PrivateKey) *log {
	l := &log{t: t, tenant: tenant}
	for _, r := range roots {
		l.roots = append(l.roots, r.Public())
	}
	l.state = NewState(tenant, l.roots)
	return l
}

// entry signs the next entry with ops; it does not append it.
func (l *log) entry(s Signer, ops ...Op) []byte {
	l.t.Helper()
	e, err := Sign(context.Background(), Entry{Tenant: l.tenant, Seq: l.state.Seq() + 1, Prev: l.state.Head(), Time: time.Unix(1764633600, 0), Ops: ops}, s)
	if err != nil {
		l.t.Fatal(err)
	}
	return e.Bytes()
}

// add signs and appends the next entry, which must be valid.
func (l *log) add(s Signer, ops ...Op) []byte {
	l.t.Helper()
	b := l.entry(s, ops...)
	if _, err := l.state.Append(b); err != nil {
		l.t.Fatalf("append: %v", err)
	}
	l.entries = append(l.entries, b)
	return b
}

const (
	rcptA = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"
	rcptB = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
	rcptC = "age1pq1testtesttesttesttesttesttesttesttesttesttesttesttesttest"
)

func keysetOp(gen uint64, ids ...uint32) Op {
	return Op{Type: OpKeyset, Keyset: KeysetRef{Generation: gen, Primary: ids[len(ids)-1], KeyIDs: ids, Commitment: sha256.Sum256([]byte{byte(gen)}), KEK: "local:///kek.json"}}
}

func TestLogLifecycle(t *testing.T) {
	root, admin := seededKey(t, "root"), seededKey(t, "admin")
	l := newLog(t, "acme", root)
	l.add(root, Op{Type: OpAdminAdd, Key: admin.Public()}, keysetOp(1, 10))
	l.add(admin, Op{Type: OpMemberAdd, User: "alice"}, Op{Type: OpDeviceAdd, User: "alice", Device: "laptop", Recipient: rcptA}, Op{Type: OpDeviceAdd, User: "alice", Device: "phone", Recipient: rcptB})
	l.add(admin, Op{Type: OpMemberAdd, User: "bob"}, Op{Type: OpDeviceAdd, User: "bob", Device: "pc", Recipient: rcptC})
	l.add(admin, Op{Type: OpMemberRemove, User: "bob"}, Op{Type: OpRevocationPoint, XID: 777}, keysetOp(2, 10, 11))

	st, err := Verify(l.roots, "acme", l.entries)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seq() != 4 || st.Head() != sha256.Sum256(l.entries[3]) {
		t.Fatalf("seq %d head %x", st.Seq(), st.Head())
	}
	if got := st.Members(); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("members %v", got)
	}
	if ds := st.Devices(); len(ds) != 2 || ds[0].Device != "laptop" || ds[1].Recipient != rcptB {
		t.Fatalf("devices %v", ds)
	}
	if _, ok := st.HasRecipient(rcptC); ok {
		t.Fatal("removed member's device still receives keys")
	}
	if k := st.Keyset(); k.Generation != 2 || k.Primary != 11 || k.Seq != 4 || k.Signer != admin.Public() {
		t.Fatalf("keyset %+v", k)
	}
	if k, ok := st.KeysetAt(1); !ok || k.Primary != 10 {
		t.Fatalf("keyset at 1: %+v %v", k, ok)
	}
	if rs := st.Revocations(); len(rs) != 1 || rs[0].XID != 777 || len(rs[0].KeyIDs) != 1 || rs[0].KeyIDs[0] != 10 {
		t.Fatalf("revocations %+v", rs)
	}
	if !st.CanSign(admin.Public()) || !st.CanSign(root.Public()) || st.CanSign(seededKey(t, "x").Public()) {
		t.Fatal("CanSign")
	}
}

func TestLogRefusals(t *testing.T) {
	root, admin, other := seededKey(t, "root"), seededKey(t, "admin"), seededKey(t, "other")
	base := func() *log {
		l := newLog(t, "acme", root)
		l.add(root, Op{Type: OpAdminAdd, Key: admin.Public()}, keysetOp(1, 10))
		l.add(admin, Op{Type: OpMemberAdd, User: "alice"}, Op{Type: OpDeviceAdd, User: "alice", Device: "laptop", Recipient: rcptA})
		return l
	}
	cases := []struct {
		name string
		want error
		make func(l *log) []byte
	}{
		{"genesis by an admin", ErrUnauthorized, func(*log) []byte {
			l := newLog(t, "acme", root)
			return l.entry(admin, keysetOp(1, 1))
		}},
		{"genesis without keyset", ErrInvalidOp, func(*log) []byte {
			l := newLog(t, "acme", root)
			return l.entry(root, Op{Type: OpMemberAdd, User: "x"})
		}},
		{"unknown signer", ErrUnauthorized, func(l *log) []byte { return l.entry(other, Op{Type: OpMemberAdd, User: "eve"}) }},
		{"admin adds an admin", ErrUnauthorized, func(l *log) []byte { return l.entry(admin, Op{Type: OpAdminAdd, Key: other.Public()}) }},
		{"device of a non-member", ErrInvalidOp, func(l *log) []byte {
			return l.entry(admin, Op{Type: OpDeviceAdd, User: "eve", Device: "d", Recipient: rcptB})
		}},
		{"recipient reused", ErrInvalidOp, func(l *log) []byte {
			return l.entry(admin, Op{Type: OpMemberAdd, User: "eve"}, Op{Type: OpDeviceAdd, User: "eve", Device: "d", Recipient: rcptA})
		}},
		{"generation goes back", ErrInvalidOp, func(l *log) []byte { return l.entry(admin, keysetOp(1, 10)) }},
		{"member twice", ErrInvalidOp, func(l *log) []byte { return l.entry(admin, Op{Type: OpMemberAdd, User: "alice"}) }},
		{"other tenant", ErrBroken, func(l *log) []byte {
			e, _ := Sign(context.Background(), Entry{Tenant: "globex", Seq: 3, Prev: l.state.Head(), Ops: []Op{{Type: OpMemberAdd, User: "x"}}}, admin)
			return e.Bytes()
		}},
		{"gap", ErrBroken, func(l *log) []byte {
			e, _ := Sign(context.Background(), Entry{Tenant: "acme", Seq: 4, Prev: l.state.Head(), Ops: []Op{{Type: OpMemberAdd, User: "x"}}}, admin)
			return e.Bytes()
		}},
		{"wrong prev", ErrBroken, func(l *log) []byte {
			e, _ := Sign(context.Background(), Entry{Tenant: "acme", Seq: 3, Prev: [32]byte{1}, Ops: []Op{{Type: OpMemberAdd, User: "x"}}}, admin)
			return e.Bytes()
		}},
		{"tampered", ErrBadSignature, func(l *log) []byte {
			b := l.entry(admin, Op{Type: OpMemberAdd, User: "eve"})
			i := bytes.Index(b, []byte("eve"))
			b[i] = 'a'
			return b
		}},
		{"trailing byte", ErrMalformed, func(l *log) []byte { return append(l.entry(admin, Op{Type: OpMemberAdd, User: "eve"}), 0) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := base()
			b := c.make(l)
			st := l.state
			if strings.HasPrefix(c.name, "genesis") {
				st = NewState("acme", l.roots)
			}
			_, err := st.Append(b)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if _, ok := errors.AsType[*Error](err); !ok && !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v is not a *chain.Error", err)
			}
		})
	}
}

func TestAdminScope(t *testing.T) {
	root, adminA, adminB := seededKey(t, "root"), seededKey(t, "a"), seededKey(t, "b")
	a := newLog(t, "acme", root)
	a.add(root, Op{Type: OpAdminAdd, Key: adminA.Public()}, keysetOp(1, 1))
	b := newLog(t, "globex", root)
	b.add(root, Op{Type: OpAdminAdd, Key: adminB.Public()}, keysetOp(1, 1))
	// globex's admin signs for acme: refused.
	if _, err := a.state.Append(a.entry(adminB, Op{Type: OpMemberAdd, User: "eve"})); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("cross-tenant admin: %v", err)
	}
	// A removed admin can no longer sign.
	a = newLog(t, "acme", root)
	a.add(root, Op{Type: OpAdminAdd, Key: adminA.Public()}, keysetOp(1, 1))
	a.add(root, Op{Type: OpAdminRemove, Key: adminA.Public()})
	if _, err := a.state.Append(a.entry(adminA, Op{Type: OpMemberAdd, User: "eve"})); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("removed admin: %v", err)
	}
	// A log verified against other roots fails at its first entry.
	if _, err := Verify([]PublicKey{adminB.Public()}, "acme", a.entries); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("other roots: %v", err)
	}
	if _, err := Verify(a.roots, "acme", nil); !errors.Is(err, ErrNoLog) {
		t.Fatalf("empty: %v", err)
	}
}

func TestBrokenStateStaysBroken(t *testing.T) {
	root := seededKey(t, "root")
	l := newLog(t, "acme", root)
	l.add(root, keysetOp(1, 1))
	// The first op applies, the second fails: the state is unusable.
	bad := l.entry(root, Op{Type: OpMemberAdd, User: "x"}, Op{Type: OpMemberAdd, User: "x"})
	if _, err := l.state.Append(bad); !errors.Is(err, ErrInvalidOp) {
		t.Fatal(err)
	}
	good := l.entry(root, Op{Type: OpMemberAdd, User: "y"})
	if _, err := l.state.Append(good); err == nil {
		t.Fatal("a broken state accepted an entry")
	}
}

func TestCert(t *testing.T) {
	admin := seededKey(t, "admin")
	c, err := SignCert(context.Background(), Cert{User: "alice", Device: "laptop", Recipient: rcptA, Time: time.Unix(1764633600, 0)}, admin)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCert(c.Bytes())
	if err != nil || got.User != "alice" || got.Device != "laptop" || got.Recipient != rcptA || got.Signer != admin.Public() {
		t.Fatalf("%+v %v", got, err)
	}
	b := bytes.Clone(c.Bytes())
	b[bytes.Index(b, []byte("laptop"))] = 'L'
	if _, err := ParseCert(b); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered: %v", err)
	}
	if _, err := ParseCert(c.Bytes()[:len(c.Bytes())-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestKeyText(t *testing.T) {
	k := seededKey(t, "root")
	p, err := ParsePublicKey(k.Public().String())
	if err != nil || p != k.Public() {
		t.Fatal(err)
	}
	k2, err := ParsePrivateKey(k.Text())
	if err != nil || k2.Public() != k.Public() {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "ssvk1", k.Public().String() + "A", "sssk1AAAA"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
	if bytes.Contains([]byte(k.String()), []byte(k.Text())) {
		t.Fatal("String prints the private key")
	}
}
