#!/usr/bin/env python3
"""An independent implementation of shapeseal cell format v1 (docs/cell-format.md),
checked against cell_v1.json. Needs the `cryptography` package.

    python3 check_vectors.py [cell_v1.json]

It uses the raw keys of the vector file, not Tink, and prints one line per
failing vector; it exits non-zero if any vector does not behave as labelled.
"""
import base64
import binascii
import json
import re
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALPHABET = re.compile(r"^[A-Za-z0-9_-]*$")


class CellError(Exception):
    pass


def associated_data(ctx):
    parts = [b"shapeseal/cell/v1", ctx["table"].encode(), ctx["column"].encode(), ctx["tenant"].encode()]
    for v in ctx.get("row_key") or []:
        parts.append(v.encode())
    return b"\x00".join(parts)


def open_cell(keys, ctx, cell):
    if not cell.startswith("ss1:"):
        if re.match(r"^ss[0-9]{1,4}:", cell):
            raise CellError("ErrMalformedCell")
        raise CellError("ErrNotEncrypted")
    body = cell[4:]
    # Strict, unpadded base64url: only the alphabet, a possible length, and
    # zero unused bits (re-encoding must give the same text).
    if not ALPHABET.match(body) or len(body) % 4 == 1:
        raise CellError("ErrMalformedCell")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error:
        raise CellError("ErrMalformedCell")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body:
        raise CellError("ErrMalformedCell")
    if len(raw) < 33 or raw[0] != 0x01:
        raise CellError("ErrMalformedCell")
    key = keys.get(int.from_bytes(raw[1:5], "big"))
    if key is None:
        raise CellError("ErrNoKey")
    try:
        return AESGCM(key).decrypt(raw[5:17], raw[17:], associated_data(ctx))
    except InvalidTag:
        raise CellError("ErrAuth")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "cell_v1.json"
    with open(path) as f:
        vf = json.load(f)
    keys = {k["key_id"]: bytes.fromhex(k["key_hex"]) for k in vf["keys"]}
    failures = 0
    for v in vf["vectors"]:
        ctx = v["context"]
        if associated_data(ctx).hex() != v["associated_data_hex"]:
            print("FAIL %s: associated data" % v["name"])
            failures += 1
        try:
            pt = open_cell(keys, ctx, v["cell"])
            got = None
        except CellError as e:
            pt, got = None, str(e)
        want = v.get("error")
        if want:
            ok = got == want
        else:
            ok = got is None and pt == bytes.fromhex(v["plaintext_hex"])
        if not ok:
            print("FAIL %s: got %s, want %s" % (v["name"], got or "plaintext", want or "plaintext"))
            failures += 1
    print("%d vectors, %d failures" % (len(vf["vectors"]), failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
