#!/usr/bin/env python3
"""An independent implementation of shapeseal tenant log, device certificate
and keyset commitment format v1 (docs/chain-format.md), checked against
chain_v1.json. Needs the `cryptography` package.

    python3 check_chain_vectors.py [chain_v1.json]

It follows the specification only, not the Go package keysync/chain: it
parses every entry and certificate strictly, verifies the Ed25519 signatures,
replays each log from its pinned roots (§4) and recomputes the keyset
commitments (§5). It prints one line per failing vector and exits non-zero if
any vector does not behave as labelled.
"""
import base64
import binascii
import hashlib
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

LOG_MAGIC = b"shapeseal/log/v1\n"
CERT_MAGIC = b"shapeseal/device/v1\n"
COMMIT_MAGIC = b"shapeseal/keyset-commit/v1\n"
MAX_ENTRY = 1 << 20
MAX_TIME = 1 << 62
MAX_KEY_IDS = 4096
RECIPIENT = re.compile(rb"age1[a-z0-9]*")
KEK_URI = re.compile(rb"[\x21-\x7e]+")
B64URL = re.compile(r"[A-Za-z0-9_-]*")

ADMIN_ADD, ADMIN_REMOVE, MEMBER_ADD, MEMBER_REMOVE = 1, 2, 3, 4
DEVICE_ADD, DEVICE_REMOVE, KEYSET, REVOCATION_POINT = 5, 6, 7, 8


class ChainError(Exception):
    """An object refused; the message is the error class of §4 and §8."""


# ---- keys ---------------------------------------------------------------

def key_text(raw):
    return "ssvk1" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_key_text(text):
    """Strict ssvk1 text form: the prefix, 43 characters of unpadded
    base64url with no unused bits set, 32 bytes."""
    if not text.startswith("ssvk1") or len(text) != 48 or not B64URL.fullmatch(text[5:]):
        raise ValueError("bad key text %r" % text)
    try:
        raw = base64.urlsafe_b64decode(text[5:] + "=")
    except binascii.Error:
        raise ValueError("bad key text %r" % text)
    if len(raw) != 32 or key_text(raw) != text:
        raise ValueError("bad key text %r" % text)
    return raw


def verify(signer, signature, message):
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---- strict reader --------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if n > len(self.data) - self.pos:
            raise ChainError("malformed")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def str(self):
        return self.take(self.u16())

    def key(self):
        return self.take(32)

    def ident(self):
        """An id: 1-1024 bytes of valid UTF-8 without NUL."""
        b = self.str()
        if not 1 <= len(b) <= 1024 or b"\x00" in b:
            raise ChainError("malformed")
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise ChainError("malformed")

    def recipient(self):
        b = self.str()
        if not 10 <= len(b) <= 4096 or not RECIPIENT.fullmatch(b):
            raise ChainError("malformed")
        return b.decode("ascii")

    def kek_uri(self):
        b = self.str()
        if not 1 <= len(b) <= 1024 or not KEK_URI.fullmatch(b):
            raise ChainError("malformed")
        return b.decode("ascii")

    def time(self):
        t = self.u64()
        if t > MAX_TIME:
            raise ChainError("malformed")
        return t

    def end(self):
        if self.pos != len(self.data):
            raise ChainError("malformed")


# ---- log entries (§2, §3) -----------------------------------------------

def parse_op(r):
    t = r.u8()
    if t in (ADMIN_ADD, ADMIN_REMOVE):
        return (t, r.key())
    if t in (MEMBER_ADD, MEMBER_REMOVE):
        return (t, r.ident())
    if t == DEVICE_ADD:
        return (t, r.ident(), r.ident(), r.recipient())
    if t == DEVICE_REMOVE:
        return (t, r.ident(), r.ident())
    if t == KEYSET:
        generation, primary, n = r.u64(), r.u32(), r.u16()
        ids = [r.u32() for _ in range(n)]
        commitment, kek = r.take(32), r.kek_uri()
        if generation == 0 or not 1 <= n <= MAX_KEY_IDS or primary not in ids:
            raise ChainError("malformed")
        if any(a >= b for a, b in zip(ids, ids[1:])):
            raise ChainError("malformed")
        return (t, generation, primary, ids, commitment, kek)
    if t == REVOCATION_POINT:
        xmax, n = r.u64(), r.u16()
        xip = [r.u64() for _ in range(n)]
        if n > MAX_KEY_IDS or any(x >= xmax for x in xip) or any(a >= b for a, b in zip(xip, xip[1:])):
            raise ChainError("malformed")
        return (t, xmax, xip)
    raise ChainError("malformed")


def parse_entry(data):
    """Parses one encoded entry and verifies its signature (§4 step 1)."""
    if len(data) > MAX_ENTRY:
        raise ChainError("malformed")
    r = Reader(data)
    if r.take(len(LOG_MAGIC)) != LOG_MAGIC:
        raise ChainError("malformed")
    e = {"tenant": r.ident(), "seq": r.u64(), "prev": r.take(32), "time": r.time()}
    count = r.u16()
    if count < 1:
        raise ChainError("malformed")
    e["ops"] = [parse_op(r) for _ in range(count)]
    e["signer"] = r.key()
    signed = data[:r.pos]
    signature = r.take(64)
    r.end()
    if not verify(e["signer"], signature, signed):
        raise ChainError("bad_signature")
    e["hash"] = hashlib.sha256(data).digest()
    return e


# ---- replay (§4) --------------------------------------------------------

class State:
    def __init__(self, tenant, roots):
        self.tenant = tenant
        self.roots = set(roots)
        self.seq = 0
        self.head = bytes(32)
        self.admins = set()
        self.members = {}       # user -> device -> recipient
        self.keysets = []       # dicts, in log order; the last one is current
        self.revocations = []

    def copy(self):
        s = State(self.tenant, self.roots)
        s.seq, s.head = self.seq, self.head
        s.admins = set(self.admins)
        s.members = {u: dict(d) for u, d in self.members.items()}
        s.keysets = list(self.keysets)
        s.revocations = list(self.revocations)
        return s

    def apply(self, data):
        """Checks one entry against the state and returns the state after it;
        the receiver is left unchanged if the entry is refused."""
        e = parse_entry(data)
        if e["tenant"] != self.tenant or e["seq"] != self.seq + 1 or e["prev"] != self.head:
            raise ChainError("broken")
        signer = e["signer"]
        if self.seq == 0:
            allowed = signer in self.roots
        else:
            allowed = signer in self.roots or signer in self.admins
        if any(op[0] in (ADMIN_ADD, ADMIN_REMOVE) for op in e["ops"]) and signer not in self.roots:
            allowed = False
        if not allowed:
            raise ChainError("unauthorized")
        s = self.copy()
        for op in e["ops"]:
            s.apply_op(op, e)
        if not s.keysets:
            raise ChainError("invalid_op")
        s.seq, s.head = e["seq"], e["hash"]
        return s

    def apply_op(self, op, e):
        t = op[0]
        if t == ADMIN_ADD:
            if op[1] in self.admins:
                raise ChainError("invalid_op")
            self.admins.add(op[1])
        elif t == ADMIN_REMOVE:
            if op[1] not in self.admins:
                raise ChainError("invalid_op")
            self.admins.remove(op[1])
        elif t == MEMBER_ADD:
            if op[1] in self.members:
                raise ChainError("invalid_op")
            self.members[op[1]] = {}
        elif t == MEMBER_REMOVE:
            if op[1] not in self.members:
                raise ChainError("invalid_op")
            del self.members[op[1]]
        elif t == DEVICE_ADD:
            _, user, device, recipient = op
            if user not in self.members or self.members[user].get(device) == recipient:
                raise ChainError("invalid_op")
            for u, devices in self.members.items():
                for d, rcpt in devices.items():
                    if rcpt == recipient and (u, d) != (user, device):
                        raise ChainError("invalid_op")
            self.members[user][device] = recipient
        elif t == DEVICE_REMOVE:
            _, user, device = op
            if device not in self.members.get(user, {}):
                raise ChainError("invalid_op")
            del self.members[user][device]
        elif t == KEYSET:
            _, generation, primary, ids, commitment, kek = op
            if self.keysets and generation <= self.keysets[-1]["generation"]:
                raise ChainError("invalid_op")
            self.keysets.append({
                "generation": generation, "primary": primary, "key_ids": list(ids),
                "commitment": commitment.hex(), "kek": kek,
                "seq": e["seq"], "signer": key_text(e["signer"]),
            })
        elif t == REVOCATION_POINT:
            if not self.keysets:
                raise ChainError("invalid_op")
            self.revocations.append({
                "seq": e["seq"], "xid": op[1], "in_progress": list(op[2]) or None,
                "key_ids": list(self.keysets[-1]["key_ids"]),
            })
        else:  # parse_op admits no other type
            raise ChainError("malformed")

    def summary(self):
        """The state in the vector file's "final" form."""
        return {
            "seq": self.seq,
            "head": self.head.hex(),
            "admins": [key_text(k) for k in sorted(self.admins)],
            "members": {u: dict(d) for u, d in self.members.items()},
            "keyset": dict(self.keysets[-1]) if self.keysets else None,
            "revocations": [dict(r) for r in self.revocations],
        }


def replay(tenant, roots, entries):
    s = State(tenant, [parse_key_text(k) for k in roots])
    for data in entries:
        s = s.apply(data)
    return s


# ---- keyset commitment (§5) ---------------------------------------------

def commitment(tenant, generation, primary, keys):
    t = tenant.encode()
    out = COMMIT_MAGIC + struct.pack(">H", len(t)) + t
    out += struct.pack(">QIH", generation, primary, len(keys))
    for key_id in sorted(keys):
        if len(keys[key_id]) != 32:
            raise ValueError("key %d is not 32 bytes" % key_id)
        out += struct.pack(">I", key_id) + keys[key_id]
    return hashlib.sha256(out).digest()


# ---- device certificates (§6) -------------------------------------------

def parse_cert(data):
    r = Reader(data)
    if r.take(len(CERT_MAGIC)) != CERT_MAGIC:
        raise ChainError("malformed")
    c = {"user": r.ident(), "device": r.ident(), "recipient": r.recipient()}
    c["time"] = r.time()
    signer = r.key()
    signed = data[:r.pos]
    signature = r.take(64)
    r.end()
    if not verify(signer, signature, signed):
        raise ChainError("bad_signature")
    c["signer"] = key_text(signer)
    return c


# ---- the vectors --------------------------------------------------------

def check_keys(vf):
    for name, k in sorted(vf["keys"].items()):
        seed = bytes.fromhex(k["seed_hex"])
        pub = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if key_text(pub) != k["public"] or parse_key_text(k["public"]) != pub:
            yield "key %s: public key %s, want %s" % (name, key_text(pub), k["public"])


def check_log(v):
    s = State(v["tenant"], [parse_key_text(k) for k in v["roots"]])
    for i, ent in enumerate(v["entries"]):
        data = bytes.fromhex(ent["hex"])
        h = hashlib.sha256(data).hexdigest()
        if h != ent["hash"]:
            yield "entry %d: hash %s, want %s" % (i + 1, h, ent["hash"])
        try:
            s = s.apply(data)
        except ChainError as e:
            yield "entry %d: refused (%s)" % (i + 1, e)
            return
    got, want = s.summary(), v["final"]
    for field in sorted(set(got) | set(want)):
        if got.get(field) != want.get(field):
            yield "final %s: got %s, want %s" % (
                field, json.dumps(got.get(field), sort_keys=True), json.dumps(want.get(field), sort_keys=True))


def check_invalid(v):
    try:
        s = replay(v["tenant"], v["roots"], [bytes.fromhex(h) for h in v["before"]])
    except ChainError as e:
        yield "prefix refused (%s)" % e
        return
    try:
        s.apply(bytes.fromhex(v["entry"]))
        got = "accepted"
    except ChainError as e:
        got = str(e)
    if got != v["error"]:
        yield "got %s, want %s" % (got, v["error"])


def check_cert(v):
    try:
        c = parse_cert(bytes.fromhex(v["hex"]))
        got = None
    except ChainError as e:
        c, got = None, str(e)
    want = v.get("error")
    if want:
        if got != want:
            yield "got %s, want %s" % (got or "valid", want)
        return
    if got:
        yield "got %s, want valid" % got
        return
    for field in ("user", "device", "recipient", "signer"):
        if c[field] != v[field]:
            yield "%s %r, want %r" % (field, c[field], v[field])


def check_commitment(v):
    keys = {int(k): bytes.fromhex(h) for k, h in v["keys"].items()}
    got = commitment(v["tenant"], v["generation"], v["primary"], keys).hex()
    if got != v["commitment"]:
        yield "got %s, want %s" % (got, v["commitment"])


def main():
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chain_v1.json")
    path = sys.argv[1] if len(sys.argv) > 1 else default
    with open(path) as f:
        vf = json.load(f)
    checks = [("keys", lambda: check_keys(vf))]
    checks += [("log %r" % v["name"], lambda v=v: check_log(v)) for v in vf["logs"]]
    checks += [("invalid %r" % v["name"], lambda v=v: check_invalid(v)) for v in vf["invalid"]]
    checks += [("cert %d" % i, lambda v=v: check_cert(v)) for i, v in enumerate(vf["certs"])]
    checks += [("commitment %d" % i, lambda v=v: check_commitment(v)) for i, v in enumerate(vf["commitments"])]
    failures = 0
    for name, check in checks:
        try:
            problems = list(check())
        except (KeyError, TypeError, ValueError) as e:
            problems = ["bad vector: %s: %s" % (type(e).__name__, e)]
        if problems:
            failures += 1
            print("FAIL %s: %s" % (name, "; ".join(problems)))
    if failures:
        print("%d vectors, %d failures" % (len(checks), failures))
        sys.exit(1)
    print("%d vectors ok" % len(checks))


if __name__ == "__main__":
    main()
