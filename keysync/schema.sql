-- shapeseal key distribution schema (design.md §4). Idempotent: every
-- statement can run again on a database that already has it. ApplySchema
-- sends the file as one simple query, which Postgres runs as one
-- transaction, under an advisory lock so that concurrent runs do not race.
SELECT pg_advisory_xact_lock(8316003847305913697); -- "shapesea" as a big-endian int64

-- Public age recipients of user devices: "age1pq1…" (post-quantum hybrid,
-- the default) or "age1…" (X25519).
CREATE TABLE IF NOT EXISTS shapeseal_devices (
	user_id    text        NOT NULL,
	device_id  text        NOT NULL,
	recipient  text        NOT NULL CHECK (recipient LIKE 'age1%'),
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, device_id)
);

-- A tenant's current keyset, age-encrypted to one device of one member.
-- This is the shape each client syncs, filtered by the proxy to its own
-- user (and device). One row per (tenant, user, device): a rotation updates
-- it, a revocation deletes it. The wrapped payload names its tenant and
-- generation; the client refuses one whose tenant differs from the row's.
CREATE TABLE IF NOT EXISTS shapeseal_tenant_keys (
	tenant_id  text        NOT NULL,
	user_id    text        NOT NULL,
	device_id  text        NOT NULL,
	generation bigint      NOT NULL CHECK (generation > 0),
	wrapped    bytea       NOT NULL,
	PRIMARY KEY (tenant_id, user_id, device_id),
	FOREIGN KEY (user_id, device_id) REFERENCES shapeseal_devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS shapeseal_tenant_keys_user_idx ON shapeseal_tenant_keys (user_id, device_id);

-- Every generation of every tenant's keyset, envelope-encrypted under a KEK
-- (Vault transit or a local file), for writers. The newest generation is
-- current; the associated data binds tenant and generation, so rows cannot
-- be swapped. (tenant_id, generation) is the primary key, so two writers
-- that rotate at once cannot both win.
CREATE TABLE IF NOT EXISTS shapeseal_keysets (
	tenant_id        text        NOT NULL,
	generation       bigint      NOT NULL CHECK (generation > 0),
	kek_uri          text        NOT NULL,
	encrypted_keyset bytea       NOT NULL,
	created_at       timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (tenant_id, generation)
);

-- Each tenant's signed, hash-chained log (docs/chain-format.md): who
-- administers the tenant, its members and their devices, the current keyset
-- generation and its KEK. This is the only authority over who receives a
-- tenant's keys; every other table is checked against it. Devices sync
-- the logs of their tenants (filtered like the tenants' data), writers and
-- admin tools read them.
CREATE TABLE IF NOT EXISTS shapeseal_log (
	tenant_id  text        NOT NULL,
	seq        bigint      NOT NULL CHECK (seq > 0),
	entry      bytea       NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (tenant_id, seq)
);

-- Device certificates (docs/chain-format.md §6): an admin's signed
-- statement of a device's recipient. A grant adds a device to a tenant's
-- log only from a certificate whose signer administers that tenant.
CREATE TABLE IF NOT EXISTS shapeseal_device_certs (
	user_id    text        NOT NULL,
	device_id  text        NOT NULL,
	signer     text        NOT NULL CHECK (signer LIKE 'ssvk1%'),
	cert       bytea       NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, device_id, signer)
);
