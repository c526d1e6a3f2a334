package keysync

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// An Admin administers tenants with one signing key: a root (which may
// also create tenants and name their admins) or an admin key that a root
// delegated tenants to. Every change is a signed entry of the tenant's log
// (package chain), and every change starts by verifying that log from the
// pinned roots: the Admin takes who the members and devices are, which
// keyset is current and which KEK holds it from the log, never from an
// unsigned row. Rows that disagree with the log are refused
// (*[StateError]) or ignored and reported (*[DeviceError]).
//
// Each operation runs in one transaction under a per-tenant advisory
// lock, so concurrent administration of a tenant never signs two entries
// with the same sequence number. An Admin keeps the logs it verified and
// verifies only the entries added since; it is safe for concurrent use.
type Admin struct {
	DB    AdminDB
	Roots []VerifyKey  // the pinned roots the logs are verified against
	Key   chain.Signer // this administrator's key

	// KEKs opens the KEK a tenant's log names; nil means [OpenKEK]. Use
	// [UseKEK] to allow only the configured one.
	KEKs KEKSource

	// Floor, if set, keeps how far each log has been seen across runs,
	// and logs below it are refused (see [Floor]).
	Floor Floor

	// Report, if set, receives every row that was ignored because the log
	// does not back it: device rows without a valid certificate
	// (*[DeviceError]) and stray wrapped keys (*[StateError]).
	Report func(error)

	mu     sync.Mutex
	states map[string]*chain.State // verified logs, by tenant, as last committed
}

func (a *Admin) report(err error) {
	if a.Report != nil {
		a.Report(err)
	}
}

// tx runs f in a transaction with tenant locked, on the tenant's verified
// state. With mustExist false, a tenant without a log gets an empty state.
func (a *Admin) tx(ctx context.Context, tenant string, mustExist bool, f func(tx pgx.Tx, st *chain.State) error) error {
	if a.DB == nil || a.Key == nil || len(a.Roots) == 0 {
		return errors.New("keysync: an Admin needs DB, Roots and Key")
	}
	// The verified log is taken out of the cache for the transaction, and
	// put back only once the transaction has committed.
	a.mu.Lock()
	st := a.states[tenant]
	delete(a.states, tenant)
	a.mu.Unlock()
	if st == nil {
		st = chain.NewState(tenant, a.Roots)
	}
	err := inTx(ctx, a.DB, tenant, func(tx pgx.Tx) error {
		if err := extendState(ctx, tx, st); err != nil {
			return err
		}
		if st.Seq() == 0 {
			if mustExist {
				return &chain.Error{Tenant: tenant, Err: chain.ErrNoLog}
			}
			// A tenant this administrator saw before has lost its log:
			// creating it again must be a decision, not an accident.
			if err := checkFloor(a.Floor, st, 0); err != nil {
				return err
			}
			return f(tx, st)
		}
		if err := checkFloor(a.Floor, st, 0); err != nil {
			return err
		}
		if err := a.mayAct(st); err != nil {
			return err
		}
		return f(tx, st)
	})
	if err == nil && st.Seq() > 0 {
		a.mu.Lock()
		if a.states == nil {
			a.states = map[string]*chain.State{}
		}
		a.states[tenant] = st
		a.mu.Unlock()
		// The floor takes in the entry just signed: a database that later
		// cuts it off (a revocation, say) is refused by the next run.
		if a.Floor != nil {
			m := FloorMark{Seq: st.Seq(), Head: st.Head(), Generation: st.Keyset().Generation}
			if ferr := a.Floor.Raise(tenant, m); ferr != nil {
				return fmt.Errorf("keysync: tenant %q changed, but its floor was not raised: %w", tenant, ferr)
			}
		}
	}
	return err
}

// mayAct refuses st's tenant to an Admin whose key is neither a pinned
// root nor an admin of the tenant.
func (a *Admin) mayAct(st *chain.State) error {
	if !st.CanSign(a.Key.Public()) {
		return &chain.Error{Tenant: st.Tenant(), Err: fmt.Errorf("%w: %s is neither a pinned root nor an admin of the tenant", chain.ErrUnauthorized, a.Key.Public())}
	}
	return nil
}

// State returns tenant's verified log.
func (a *Admin) State(ctx context.Context, tenant string) (*chain.State, error) {
	return LoadState(ctx, a.DB, a.Roots, tenant, a.Floor)
}

// CreateTenant creates tenant: a new keyset at generation 1, stored under
// kek, and the first entry of the tenant's log, which names the keyset and
// delegates the tenant to admins. Only a root may create a tenant. A tenant
// that has a log already is an error wrapping [ErrTenantExists].
func (a *Admin) CreateTenant(ctx context.Context, kek KEK, tenant string, admins ...VerifyKey) (*Keyset, error) {
	if a.Key == nil {
		return nil, errors.New("keysync: an Admin needs DB, Roots and Key")
	}
	if !slices.Contains(a.Roots, a.Key.Public()) {
		return nil, fmt.Errorf("%w: creating a tenant takes a pinned root key, not %s", chain.ErrUnauthorized, a.Key.Public())
	}
	var ks *Keyset
	err := a.tx(ctx, tenant, false, func(tx pgx.Tx, st *chain.State) error {
		if st.Seq() > 0 {
			return detail(ErrTenantExists, "tenant %q has a log of %d entries", tenant, st.Seq())
		}
		var err error
		if ks, err = NewKeyset(tenant); err != nil {
			return err
		}
		if err := StoreKeyset(ctx, tx, kek, ks); err != nil {
			return err
		}
		var ops []chain.Op
		for _, k := range admins {
			if !slices.ContainsFunc(ops, func(o chain.Op) bool { return o.Key == k }) {
				ops = append(ops, chain.Op{Type: chain.OpAdminAdd, Key: k})
			}
		}
		ops = append(ops, chain.Op{Type: chain.OpKeyset, Keyset: ks.Ref(kek.URI())})
		return appendEntry(ctx, tx, st, a.Key, ops)
	})
	return ks, err
}

// SetAdmins delegates tenant to the keys add and withdraws it from the keys
// remove, in one log entry. Only a root may.
func (a *Admin) SetAdmins(ctx context.Context, tenant string, add, remove []VerifyKey) error {
	return a.tx(ctx, tenant, true, func(tx pgx.Tx, st *chain.State) error {
		var ops []chain.Op
		for _, k := range add {
			ops = append(ops, chain.Op{Type: chain.OpAdminAdd, Key: k})
		}
		for _, k := range remove {
			ops = append(ops, chain.Op{Type: chain.OpAdminRemove, Key: k})
		}
		if len(ops) == 0 {
			return nil
		}
		return appendEntry(ctx, tx, st, a.Key, ops)
	})
}

// CertifyDevice registers a user's device: it signs a device certificate
// (package chain) for the recipient with the Admin's key and stores it, and
// the device's row in shapeseal_devices. The certificate counts for the
// tenants the key administers; [Admin.Grant] then gives the device the
// tenant's keys. Certifying a device again with another recipient replaces
// it (re-keying a device), from the next grant on.
//
// Check the recipient out of band (it came from the user's device, not
// from the database): the certificate says the Admin vouches for it.
func (a *Admin) CertifyDevice(ctx context.Context, user, device, recipient string) error {
	if _, err := ParseRecipient(recipient); err != nil {
		return err
	}
	c, err := chain.SignCert(ctx, chain.Cert{User: user, Device: device, Recipient: recipient}, a.Key)
	if err != nil {
		return err
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, device_id) DO UPDATE SET recipient = excluded.recipient`, user, device, recipient)
	b.Queue(`INSERT INTO shapeseal_device_certs (user_id, device_id, signer, cert) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id, signer) DO UPDATE SET cert = excluded.cert, created_at = now()`,
		user, device, c.Signer.String(), c.Bytes())
	if err := a.DB.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("keysync: certify device %s/%s: %w", user, device, err)
	}
	return nil
}

// certifiedDevices returns user's devices that hold a valid certificate by
// a key that may sign for st's tenant — the newest such certificate per
// device — and reports device rows that have none, or whose recipient
// differs from the certificate's.
func (a *Admin) certifiedDevices(ctx context.Context, tx pgx.Tx, st *chain.State, user string) ([]chain.Device, error) {
	rows, err := tx.Query(ctx, `SELECT c.device_id, c.cert, d.recipient FROM shapeseal_device_certs c
		LEFT JOIN shapeseal_devices d USING (user_id, device_id) WHERE c.user_id = $1 ORDER BY 1`, user)
	if err != nil {
		return nil, fmt.Errorf("keysync: device certificates of %q: %w", user, err)
	}
	type certRow struct {
		device string
		cert   []byte
		row    *string
	}
	crs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (c certRow, err error) {
		return c, r.Scan(&c.device, &c.cert, &c.row)
	})
	if err != nil {
		return nil, fmt.Errorf("keysync: device certificates of %q: %w", user, err)
	}
	best := map[string]*chain.Cert{}
	for _, cr := range crs {
		c, err := chain.ParseCert(cr.cert)
		switch {
		case err != nil:
			a.report(&DeviceError{User: user, Device: cr.device, Detail: err.Error()})
		case c.User != user || c.Device != cr.device:
			a.report(&DeviceError{User: user, Device: cr.device, Detail: "the certificate is for another device"})
		case !st.CanSign(c.Signer):
			// A certificate by an admin of another tenant: not for this one.
		case replayed(st, c):
			a.report(&DeviceError{User: user, Device: cr.device, Detail: "the certificate is older than the recipient the log holds for the device (a replayed certificate)"})
		case best[cr.device] == nil || c.Time.After(best[cr.device].Time):
			best[cr.device] = c
		}
	}
	var out []chain.Device
	for _, d := range slices.Sorted(maps.Keys(best)) {
		out = append(out, chain.Device{User: user, Device: d, Recipient: best[d].Recipient})
	}
	// Report the device rows the certificates do not back.
	var devs []struct{ d, r string }
	rows, err = tx.Query(ctx, `SELECT device_id, recipient FROM shapeseal_devices WHERE user_id = $1`, user)
	if err == nil {
		devs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (x struct{ d, r string }, err error) {
			return x, r.Scan(&x.d, &x.r)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("keysync: devices of %q: %w", user, err)
	}
	for _, row := range devs {
		switch c := best[row.d]; {
		case c == nil:
			a.report(&DeviceError{User: user, Device: row.d, Detail: "no certificate by a root or an admin of tenant " + strconv.Quote(st.Tenant())})
		case c.Recipient != row.r:
			a.report(&DeviceError{User: user, Device: row.d, Detail: "the row's recipient is not the certified one (the certified one is used)"})
		}
	}
	return out, nil
}

// replayed reports whether c is a certificate someone kept and put back:
// one that names a recipient the log already replaced for that device
// (re-keyed), or one that would change the device's recipient although it
// is older than the entry that set the current one.
func replayed(st *chain.State, c *chain.Cert) bool {
	if st.HadRecipient(c.User, c.Device, c.Recipient) {
		if r, ok := st.Device(c.User, c.Device); !ok || r != c.Recipient {
			return true
		}
	}
	r, ok := st.Device(c.User, c.Device)
	if !ok || r == c.Recipient {
		return false
	}
	since, _ := st.DeviceTime(c.User, c.Device)
	return c.Time.Before(since)
}

// Grant makes user a member of tenant with their certified devices (see
// [Admin.CertifyDevice]) — or, for a member, brings the log up to date with
// their devices' certificates — in a signed log entry, and wraps the
// tenant's current keyset to each of those devices. It returns the number
// of devices; a user without certified devices is an error wrapping
// [ErrNoDevices]. Granting again after re-certifying a device re-wraps to
// its new recipient at the same generation.
//
// Grant is the only way into a tenant: a revoked member, or a row put back
// into shapeseal_tenant_keys, gets nothing until an Admin grants again.
func (a *Admin) Grant(ctx context.Context, tenant, user string) (int, error) {
	var n int
	err := a.tx(ctx, tenant, true, func(tx pgx.Tx, st *chain.State) error {
		devs, err := a.certifiedDevices(ctx, tx, st, user)
		if err != nil {
			return err
		}
		if len(devs) == 0 {
			return detail(ErrNoDevices, "user %q has no device certified by a root or an admin of tenant %q", user, tenant)
		}
		var ops []chain.Op
		if !st.IsMember(user) {
			ops = append(ops, chain.Op{Type: chain.OpMemberAdd, User: user})
		}
		for _, d := range devs {
			if r, ok := st.Device(user, d.Device); !ok || r != d.Recipient {
				ops = append(ops, chain.Op{Type: chain.OpDeviceAdd, User: user, Device: d.Device, Recipient: d.Recipient})
			}
		}
		if len(ops) > 0 {
			if err := appendEntry(ctx, tx, st, a.Key, ops); err != nil {
				return err
			}
		}
		ks, err := LoadKeyset(ctx, tx, st, a.KEKs)
		if err != nil {
			return err
		}
		n = len(devs)
		return a.wrapFor(ctx, tx, st, ks, user)
	})
	return n, err
}

// Rotate adds a new primary key to tenant's keyset, stores the new
// generation under the KEK the log names, records it in the log and
// re-wraps it for every member device the log lists, in one transaction.
// Cells sealed before keep opening with the older keys until they are
// re-encrypted ([Admin.Reencrypt]).
func (a *Admin) Rotate(ctx context.Context, tenant string) (*Keyset, error) {
	var ks *Keyset
	err := a.tx(ctx, tenant, true, func(tx pgx.Tx, st *chain.State) (err error) {
		ks, err = a.rotateIn(ctx, tx, st, (*Keyset).Rotate, nil)
		return err
	})
	return ks, err
}

// Revoke removes user from tenant: one log entry removes the member and
// their devices, records the revocation point (the database transaction,
// for [Admin.Reencrypt]) and names a rotated keyset, which is re-wrapped
// for the remaining devices; the user's wrapped keys are deleted. Cells
// written after Revoke cannot be opened by the user's devices; cells
// written before can until they are re-encrypted and the old keys retired
// — and whatever the user already read or kept is beyond reach. A user who
// is not a member is an error wrapping [ErrNotMember].
func (a *Admin) Revoke(ctx context.Context, tenant, user string) (*Keyset, error) {
	var ks *Keyset
	err := a.tx(ctx, tenant, true, func(tx pgx.Tx, st *chain.State) error {
		if !st.IsMember(user) {
			return detail(ErrNotMember, "user %q, tenant %q", user, tenant)
		}
		// The revocation point is this transaction's snapshot: a row
		// written by a transaction it does not see — one running now, or
		// one that starts later — counts as written after the revocation.
		var (
			xmax int64
			xip  []int64
		)
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmax(s)::text::int8,
			array(SELECT x::text::int8 FROM pg_snapshot_xip(s) x ORDER BY 1)
			FROM pg_current_snapshot() s`).Scan(&xmax, &xip); err != nil {
			return fmt.Errorf("keysync: revoke: %w", err)
		}
		point := chain.Op{Type: chain.OpRevocationPoint, XID: uint64(xmax)}
		for _, x := range xip {
			point.InProgress = append(point.InProgress, uint64(x))
		}
		if _, err := tx.Exec(ctx, `DELETE FROM shapeseal_tenant_keys WHERE tenant_id = $1 AND user_id = $2`, tenant, user); err != nil {
			return fmt.Errorf("keysync: revoke: %w", err)
		}
		ops := []chain.Op{{Type: chain.OpMemberRemove, User: user}, point}
		var err error
		ks, err = a.rotateIn(ctx, tx, st, (*Keyset).Rotate, ops)
		return err
	})
	return ks, err
}

// RetireKeys removes the keys ids from tenant's keyset at the next
// generation, records it in the log and re-wraps it for every member
// device, in one transaction. Cells sealed with a retired key no longer
// open, so RetireKeys first counts, under the tenant's lock, the tenant's
// cells sealed with ids, and refuses with a *[KeysInUseError] (nothing
// retired) if there are any.
//
// A tenant's keyset seals the cells of every table with encrypted columns.
// The count takes in the columns of tables, which must name at least one
// table, and every text column of every table that has a column named like
// one of their tenant columns; name every table whose tenant column is
// named otherwise. Re-encrypt them first ([Admin.Reencrypt]).
func (a *Admin) RetireKeys(ctx context.Context, tenant string, tables []TableSpec, ids ...uint32) (*Keyset, error) {
	if len(tables) == 0 {
		return nil, errors.New("keysync: retire: name the tables that hold the tenant's cells")
	}
	for i := range tables {
		if err := tables[i].Validate(); err != nil {
			return nil, err
		}
	}
	var ks *Keyset
	err := a.tx(ctx, tenant, true, func(tx pgx.Tx, st *chain.State) error {
		inUse, err := keysInUse(ctx, tx, tenant, tables, ids)
		if err != nil {
			return err
		}
		if inUse != nil {
			return inUse
		}
		ks, err = a.rotateIn(ctx, tx, st, func(ks *Keyset) (*Keyset, error) { return ks.retire(ids) }, nil)
		return err
	})
	return ks, err
}

// rotateIn replaces the tenant's keyset with next of the current one,
// stores it under the same KEK, appends a log entry of ops followed by the
// new keyset, and re-wraps it for every device of the log.
func (a *Admin) rotateIn(ctx context.Context, tx pgx.Tx, st *chain.State, next func(*Keyset) (*Keyset, error), ops []chain.Op) (*Keyset, error) {
	ks, err := LoadKeyset(ctx, tx, st, a.KEKs)
	if err != nil {
		return nil, err
	}
	if ks, err = next(ks); err != nil {
		return nil, err
	}
	uri := st.Keyset().KEK
	kek, err := a.kek(uri)
	if err != nil {
		return nil, err
	}
	// Rows above the log's generation were stored by someone who cannot
	// sign: they would block the new generation.
	tag, err := tx.Exec(ctx, `DELETE FROM shapeseal_keysets WHERE tenant_id = $1 AND generation > $2`, st.Tenant(), int64(st.Keyset().Generation))
	if err != nil {
		return nil, fmt.Errorf("keysync: tenant %q: %w", st.Tenant(), err)
	}
	if tag.RowsAffected() > 0 {
		a.report(&StateError{Tenant: st.Tenant(), Table: "shapeseal_keysets", Detail: fmt.Sprintf("deleted %d keyset rows above the log's generation %d", tag.RowsAffected(), st.Keyset().Generation)})
	}
	if err := StoreKeyset(ctx, tx, kek, ks); err != nil {
		return nil, err
	}
	ops = append(ops, chain.Op{Type: chain.OpKeyset, Keyset: ks.Ref(uri)})
	if err := appendEntry(ctx, tx, st, a.Key, ops); err != nil {
		return nil, err
	}
	return ks, a.wrapFor(ctx, tx, st, ks, "")
}

func (a *Admin) kek(uri string) (KEK, error) {
	if a.KEKs == nil {
		return OpenKEK(uri)
	}
	return a.KEKs(uri)
}

// wrapFor wraps ks to the devices st lists — of user only, unless user is
// empty — signed by the Admin's key, and upserts their rows of
// shapeseal_tenant_keys: under the tenant lock the log is the authority, so
// whatever a row held is replaced. Every other row of
// the tenant (or of user) is deleted: no row the log does not back stays,
// and the stray ones are reported.
func (a *Admin) wrapFor(ctx context.Context, tx pgx.Tx, st *chain.State, ks *Keyset, user string) error {
	b := &pgx.Batch{}
	var keep [][2]string
	for _, d := range st.Devices() {
		if user != "" && d.User != user {
			continue
		}
		wrapped, err := Wrap(ctx, ks, a.Key, d.Recipient)
		if err != nil {
			return fmt.Errorf("keysync: device %s/%s: %w", d.User, d.Device, err)
		}
		b.Queue(`INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, device_id) DO NOTHING`, d.User, d.Device, d.Recipient)
		b.Queue(`INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE
			SET generation = excluded.generation, wrapped = excluded.wrapped`,
			ks.tenant, d.User, d.Device, int64(ks.generation), wrapped)
		keep = append(keep, [2]string{d.User, d.Device})
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("keysync: store wrapped keys of tenant %q: %w", st.Tenant(), err)
	}
	return a.deleteStray(ctx, tx, st.Tenant(), user, keep)
}

// deleteStray deletes the rows of tenant's wrapped keys (of user, unless
// empty) for devices other than keep, and reports them.
func (a *Admin) deleteStray(ctx context.Context, tx pgx.Tx, tenant, user string, keep [][2]string) error {
	users, devices := make([]string, len(keep)), make([]string, len(keep))
	for i, k := range keep {
		users[i], devices[i] = k[0], k[1]
	}
	rows, err := tx.Query(ctx, `DELETE FROM shapeseal_tenant_keys k WHERE tenant_id = $1 AND ($2 = '' OR user_id = $2)
		AND (user_id, device_id) NOT IN (SELECT * FROM unnest($3::text[], $4::text[]))
		RETURNING user_id, device_id`, tenant, user, users, devices)
	if err != nil {
		return fmt.Errorf("keysync: delete stray wrapped keys of tenant %q: %w", tenant, err)
	}
	stray, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ User, Device string }])
	if err != nil {
		return fmt.Errorf("keysync: delete stray wrapped keys of tenant %q: %w", tenant, err)
	}
	for _, s := range stray {
		a.report(&StateError{Tenant: tenant, Table: "shapeseal_tenant_keys", Detail: fmt.Sprintf("deleted the wrapped key of device %q of %q, which the log does not list", s.Device, s.User)})
	}
	return nil
}
