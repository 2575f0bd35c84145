#!/usr/bin/env python3
"""An independent verifier of kappadb data, written from docs/FORMAT.md alone.

It uses only Python's standard library: BLAKE3 and ed25519 (with kappadb's
signature rule) are implemented below, slowly but plainly.

    python3 examples/verify.py DIR              verify a database's log (stopped or running)
    kappa --json get --raw FEED SEQ | python3 examples/verify.py --entries
                                                verify entries exported by the API
    python3 examples/verify.py --vectors docs/FORMAT.md
                                                check the document's known-answer vectors

Exit status 0 when everything verifies, 1 when something does not (each
problem on stderr), 2 on a usage error.
"""

import base64
import hashlib
import json
import os
import re
import struct
import sys
import zlib

# ---------------------------------------------------------------- BLAKE3

B3_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
         0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
B3_PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
M32 = 0xFFFFFFFF


def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & M32


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & M32
    s[d] = _rotr(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M32
    s[b] = _rotr(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b] + y) & M32
    s[d] = _rotr(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M32
    s[b] = _rotr(s[b] ^ s[c], 7)


def _compress(cv, words, counter, block_len, flags):
    s = list(cv) + B3_IV[:4] + [counter & M32, (counter >> 32) & M32, block_len, flags]
    m = list(words)
    for r in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in B3_PERM]
    for i in range(8):
        s[i] ^= s[i + 8]
        s[i + 8] ^= cv[i]
    return s


def _words(block):
    block = block.ljust(64, b"\0")
    return list(struct.unpack("<16I", block))


def _chunk_output(chunk, counter):
    """(cv, words, counter, len, flags) of a chunk's last block, uncompressed."""
    cv = B3_IV
    blocks = [chunk[i:i + 64] for i in range(0, len(chunk), 64)] or [b""]
    for i, block in enumerate(blocks):
        flags = CHUNK_START if i == 0 else 0
        if i == len(blocks) - 1:
            return (cv, _words(block), counter, len(block), flags | CHUNK_END)
        cv = _compress(cv, _words(block), counter, 64, flags)[:8]
    raise AssertionError("unreachable")


def _cv(output):
    cv, words, counter, n, flags = output
    return _compress(cv, words, counter, n, flags)[:8]


def _parent(left, right):
    return (B3_IV, left + right, 0, 64, PARENT)


def blake3(data):
    """The 32-byte BLAKE3 hash of data."""
    chunks = [data[i:i + 1024] for i in range(0, len(data), 1024)] or [b""]
    stack = []
    for n, chunk in enumerate(chunks[:-1]):
        cv = _cv(_chunk_output(chunk, n))
        total = n + 1
        while total & 1 == 0:
            cv = _cv(_parent(stack.pop(), cv))
            total >>= 1
        stack.append(cv)
    output = _chunk_output(chunks[-1], len(chunks) - 1)
    while stack:
        output = _parent(stack.pop(), _cv(output))
    cv, words, counter, n, flags = output
    out = _compress(cv, words, counter, n, flags | ROOT)
    return struct.pack("<8I", *out[:8])


# ---------------------------------------------------------------- ed25519

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * D * t1 * t2 % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _neg(a):
    x, y, z, t = a
    return (-x % P, y, z, -t % P)


def _mul(k, a):
    result = IDENTITY
    while k:
        if k & 1:
            result = _add(result, a)
        a = _add(a, a)
        k >>= 1
    return result


def _is_identity(a):
    x, y, z, _ = a
    return x % P == 0 and (y - z) % P == 0


def canonical_encoding(b):
    """Section 3: y < p, and the sign bit clear when x = 0."""
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    sign = b[31] >> 7
    return y < P and not (sign == 1 and y in (1, P - 1))


def decode_point(b):
    """The point of a canonical encoding, or None."""
    if len(b) != 32 or not canonical_encoding(b):
        return None
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    sign = b[31] >> 7
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    elif v * x * x % P != u:
        return None
    if x & 1 != sign:
        x = (-x) % P
    return (x, y, 1, x * y % P)


BASE = decode_point((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
_keys = {}


def key_ok(a):
    """Rule S1: canonical, in the prime-order subgroup, not the identity."""
    if a not in _keys:
        point = decode_point(a)
        ok = (point is not None and not _is_identity(_mul(8, point))
              and _is_identity(_mul(L, point)))
        _keys[a] = point if ok else None
    return _keys[a] is not None


def signature_ok(a, msg, sig):
    """Rules S1 to S4 for a 64-byte signature by key a over msg."""
    if len(sig) != 64 or not key_ok(a):
        return False
    r_bytes, s = sig[:32], int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    r = decode_point(r_bytes)
    if r is None or _is_identity(_mul(8, r)):
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + a + msg).digest(), "little") % L
    check = _add(_add(_mul(s, BASE), _neg(r)), _neg(_mul(k, _keys[a])))
    return _is_identity(_mul(8, check))


# ---------------------------------------------------------------- postcard

class Bad(Exception):
    pass


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise Bad("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def varint(self, bits):
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if byte & 0x80 == 0:
                break
            shift += 7
            if shift >= bits + 7:
                raise Bad("varint too long")
        if value >= 1 << bits:
            raise Bad("varint out of range")
        return value

    def option(self):
        tag = self.u8()
        if tag not in (0, 1):
            raise Bad("bad option tag")
        return tag == 1

    def done(self):
        return self.pos == len(self.data)


def varint_bytes(v):
    out = bytearray()
    while True:
        if v < 0x80:
            out.append(v)
            return bytes(out)
        out.append((v & 0x7F) | 0x80)
        v >>= 7


def encode_header(h):
    out = bytes([h["version"]]) + h["author"] + varint_bytes(h["seq"])
    out += b"\0" if h["prev"] is None else b"\1" + h["prev"]
    out += varint_bytes(h["timestamp"]) + varint_bytes(h["payload_len"]) + h["payload_hash"]
    return out


def read_header(r):
    h = {"version": r.u8(), "author": r.take(32), "seq": r.varint(64)}
    h["prev"] = r.take(32) if r.option() else None
    h["timestamp"] = r.varint(64)
    h["payload_len"] = r.varint(32)
    h["payload_hash"] = r.take(32)
    return h


ID_DOMAIN = b"kappadb/entry-id/v1\0"


def entry_id(header_bytes):
    return blake3(ID_DOMAIN + header_bytes)


def header_problems(h, header_bytes, sig):
    """Rules 1 to 4 of section 3 (the chain is the caller's)."""
    out = []
    if encode_header(h) != header_bytes:
        out.append("header not canonically encoded")
    if h["version"] != 1:
        out.append(f"unknown version {h['version']}")
    if h["seq"] < 1 or (h["seq"] == 1) != (h["prev"] is None):
        out.append("seq and prev disagree")
    if not key_ok(h["author"]):
        out.append("author is not an acceptable key")
    elif not signature_ok(h["author"], entry_id(header_bytes), sig):
        out.append("bad signature")
    return out


DELETE_V1 = b"\0kappadb/delete/v1\0"


def parse_deletion(payload):
    """(targets [(seq, id)], up_to) of a deletion payload, or None."""
    if not payload.startswith(DELETE_V1):
        return None
    r = Reader(payload[len(DELETE_V1):])
    targets = [(r.varint(64), r.take(32)) for _ in range(r.varint(64))]
    up_to = r.varint(64) if r.option() else None
    body = varint_bytes(len(targets)) + b"".join(varint_bytes(s) + i for s, i in targets)
    body += b"\0" if up_to is None else b"\1" + varint_bytes(up_to)
    if not r.done() or DELETE_V1 + body != payload:
        raise Bad("deletion not canonically encoded")
    return targets, up_to


def read_signed_header(r):
    start = r.pos
    h = read_header(r)
    header_bytes = r.data[start:r.pos]
    if r.varint(64) != 64:
        raise Bad("signature is not 64 bytes")
    return h, header_bytes, r.take(64)


# ---------------------------------------------------------------- the log

def records_of_segment(path, start):
    """(offset, body) of each record of a plain segment."""
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 8 or data[pos:pos + 8] == b"\0" * 8:
            if any(data[pos:]):
                raise Bad(f"{path}: bytes after the end of the records at {start + pos}")
            return
        length, crc = struct.unpack_from("<II", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or zlib.crc32(body) != crc:
            raise Bad(f"{path}: bad record at offset {start + pos}")
        yield start + pos, body
        pos += 8 + length


def records_of_compacted(path):
    data = open(path, "rb").read()
    if len(data) < 44 or data[:8] != b"kappacs1" or data[-8:] != b"kappacs1":
        raise Bad(f"{path}: not a compacted segment")
    index_pos, _crc = struct.unpack_from("<QI", data, len(data) - 20)
    pos = 24
    while pos < index_pos:
        length, crc, logical, logical_len = struct.unpack_from("<IIQI", data, pos)
        body = data[pos + 20:pos + 20 + length]
        if len(body) != length or zlib.crc32(struct.pack("<QI", logical, logical_len) + body) != crc:
            raise Bad(f"{path}: bad frame at {pos}")
        if body[:1] == b"\1" and len(body) >= 3:
            # An erased entry's body ends at its flag: give back the zeros.
            hl = struct.unpack_from("<H", body, 1)[0]
            flag_at = 3 + hl + 64
            if len(body) == flag_at + 1 and body[flag_at] == 2:
                body = body + b"\0" * (logical_len - 8 - len(body))
        yield logical, body
        pos += 20 + length


def log_records(db_dir):
    log = os.path.join(db_dir, "log")
    segments = {}
    for name in os.listdir(log):
        m = re.fullmatch(r"(\d{20})\.(seg|cseg)", name)
        if m:
            start = int(m.group(1))
            # A compacted segment beside its plain one wins (section 6.5).
            if m.group(2) == "cseg" or start not in segments:
                segments[start] = os.path.join(log, name)
    for start in sorted(segments):
        path = segments[start]
        if path.endswith(".cseg"):
            yield from records_of_compacted(path)
        else:
            yield from records_of_segment(path, start)


def verify_log(db_dir):
    heads = {}      # feed -> (seq, id)
    ids = {}        # (feed, seq) -> id
    erased = []     # (feed, seq) of erased entries
    deleted = {}    # feed -> (set of seqs, greatest up_to)
    problems = []
    counts = {"records": 0, "entries": 0, "forks": 0, "erased": 0, "deletions": 0,
              "absent": 0}

    def problem(offset, text):
        problems.append(f"offset {offset}: {text}")

    for offset, body in log_records(db_dir):
        counts["records"] += 1
        kind = body[0]
        try:
            if kind == 1:
                r = Reader(body[1:])
                hl = struct.unpack("<H", r.take(2))[0]
                header_bytes = r.take(hl)
                h = read_header(Reader(header_bytes))
                sig = r.take(64)
                flag = r.u8()
                rest = body[1 + 2 + hl + 64 + 1:]
                feed, seq = h["author"], h["seq"]
                for p in header_problems(h, header_bytes, sig):
                    problem(offset, p)
                head = heads.get(feed)
                want = (1, None) if head is None else (head[0] + 1, head[1])
                if (seq, h["prev"]) != want:
                    problem(offset, f"feed {feed.hex()[:8]} seq {seq} does not extend its head")
                eid = entry_id(header_bytes)
                heads[feed] = (seq, eid)
                ids[(feed, seq)] = eid
                counts["entries"] += 1
                if flag == 0:
                    counts["absent"] += 1
                    if rest:
                        problem(offset, "bytes after an absent payload")
                elif flag == 1:
                    if len(rest) != h["payload_len"] or blake3(rest) != h["payload_hash"]:
                        problem(offset, "payload does not match its header")
                    deletion = parse_deletion(rest)
                    if deletion is not None:
                        counts["deletions"] += 1
                        targets, up_to = deletion
                        seqs = [s for s, _ in targets]
                        if (not targets and up_to is None) or seqs != sorted(set(seqs)) \
                                or any(not 1 <= s < seq for s in seqs) \
                                or (up_to is not None and not 1 <= up_to < seq):
                            continue  # breaks a rule: no effect
                        if any(ids.get((feed, s)) not in (None, i) for s, i in targets):
                            continue
                        mine = deleted.setdefault(feed, (set(), 0))
                        mine[0].update(s for s, i in targets if ids.get((feed, s)) == i)
                        deleted[feed] = (mine[0], max(mine[1], up_to or 0))
                elif flag == 2:
                    counts["erased"] += 1
                    erased.append((offset, feed, seq))
                    if any(rest):
                        problem(offset, "erased payload not zeroed")
                else:
                    problem(offset, f"bad payload flag {flag}")
            elif kind == 2:
                r = Reader(body[1:])
                a, b = read_signed_header(r), read_signed_header(r)
                if not r.done():
                    raise Bad("trailing bytes after a fork proof")
                for h, hb, sig in (a, b):
                    for p in header_problems(h, hb, sig):
                        problem(offset, "fork proof: " + p)
                if a[0]["author"] != b[0]["author"] or a[0]["seq"] != b[0]["seq"] \
                        or not entry_id(a[1]) < entry_id(b[1]):
                    problem(offset, "fork proof headers do not conflict in order")
                counts["forks"] += 1
            elif kind == 3:
                if any(body[1:]):
                    problem(offset, "padding not zeroed")
            elif kind == 4:
                if len(body) != 33:
                    problem(offset, "bad forget marker")
                heads.pop(body[1:], None)
            else:
                problem(offset, f"unknown record kind {kind}")
        except Bad as e:
            problem(offset, str(e))
    for offset, feed, seq in erased:
        seqs, up_to = deleted.get(feed, (set(), 0))
        if seq not in seqs and seq > up_to:
            problem(offset, f"feed {feed.hex()[:8]} seq {seq} is erased but no deletion names it")
    return counts, len(heads), problems


# ---------------------------------------------------------------- API entries

def verify_entry_json(e):
    """Problems of one entry as `kappa --json get --raw` prints it."""
    raw = e.get("raw")
    if not raw:
        return ["no raw field (use --raw)"]
    header_bytes = bytes.fromhex(raw["header"])
    r = Reader(header_bytes)
    h = read_header(r)
    out = [] if r.done() else ["trailing bytes after the header"]
    out += header_problems(h, header_bytes, bytes.fromhex(e["signature"]))
    fields = {"feed": h["author"].hex(), "seq": h["seq"],
              "prev": h["prev"].hex() if h["prev"] else None,
              "timestamp": h["timestamp"], "payload_len": h["payload_len"],
              "payload_hash": h["payload_hash"].hex(), "version": h["version"],
              "id": entry_id(header_bytes).hex()}
    for name, value in fields.items():
        if e.get(name) != value:
            out.append(f"{name} is {e.get(name)!r}, the signed header says {value!r}")
    if raw.get("payload") is not None:
        if raw["payload_encoding"] == "utf8":
            payload = raw["payload"].encode("utf-8")
        else:
            payload = base64.b64decode(raw["payload"], validate=True)
        if len(payload) != h["payload_len"] or blake3(payload) != h["payload_hash"]:
            out.append("payload does not match its header")
    return out


# ---------------------------------------------------------------- FORMAT.md vectors

def check_vectors(path):
    v = {}
    for line in open(path, encoding="utf-8"):
        m = re.fullmatch(r"([a-z0-9-]+) = ([0-9a-f]+)\s*", line)
        if m:
            v[m.group(1)] = bytes.fromhex(m.group(2))
    out = []

    def expect(what, ok):
        if not ok:
            out.append(what)

    expect("blake3 of the empty string", blake3(b"").hex() ==
           "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
    long_input = bytes(i % 251 for i in range(3000))
    expect("blake3 over several chunks", blake3(long_input) == v["blake3-3000"])
    for e in ("e1", "e2", "e3"):
        h = read_header(Reader(v[f"{e}-header"]))
        if f"{e}-id" in v:
            expect(f"{e} id", entry_id(v[f"{e}-header"]) == v[f"{e}-id"])
        expect(f"{e} author", h["author"] == v["feed-id"])
        expect(f"{e} header", header_problems(h, v[f"{e}-header"], v[f"{e}-signature"]) == [])
        record = v[f"{e}-record"]
        length, crc = struct.unpack_from("<II", record)
        body = record[8:]
        expect(f"{e} record frame", length == len(body) and zlib.crc32(body) == crc)
        expect(f"{e} record header", body[3:3 + len(v[f'{e}-header'])] == v[f"{e}-header"])
    expect("e1 payload", blake3(b"hello") == read_header(Reader(v["e1-header"]))["payload_hash"])
    expect("e3 deletes e1", parse_deletion(v["e3-payload"]) == ([(1, v["e1-id"])], None))
    erased = v["e1-record-erased"]
    expect("erased record keeps its length", len(erased) == len(v["e1-record"]))
    expect("erased record", erased[8:-6] == v["e1-record"][8:-6] and erased[-6:] == b"\2" + b"\0" * 5)
    r = Reader(v["fork-record"][9:])
    a, b = read_signed_header(r), read_signed_header(r)
    expect("fork proof", r.done() and a[0]["seq"] == b[0]["seq"] == 2
           and entry_id(a[1]) < entry_id(b[1])
           and not header_problems(*a) and not header_problems(*b))
    # A mixed-order key is refused (S1): the base point plus a point of order 2.
    order2 = (0, P - 1, 1, 0)
    mixed = _add(BASE, order2)
    zinv = pow(mixed[2], P - 2, P)
    x, y = mixed[0] * zinv % P, mixed[1] * zinv % P
    enc = (y | ((x & 1) << 255)).to_bytes(32, "little")
    expect("mixed-order key refused", not key_ok(enc) and key_ok(v["feed-id"]))
    return out


def main(argv):
    if len(argv) == 2 and argv[0] == "--vectors":
        problems = check_vectors(argv[1])
        for p in problems:
            print("vector:", p, file=sys.stderr)
        print("vectors: ok" if not problems else f"vectors: {len(problems)} problems")
        return 1 if problems else 0
    if argv == ["--entries"]:
        n, bad = 0, 0
        for line in sys.stdin:
            if not line.strip():
                continue
            n += 1
            e = json.loads(line)
            for p in verify_entry_json(e):
                bad += 1
                print(f"entry {e.get('feed', '?')[:8]} #{e.get('seq')}: {p}", file=sys.stderr)
        print(f"{'ok' if not bad else 'FAILED'}: {n} entries checked, {bad} problems")
        return 1 if bad or n == 0 else 0
    if len(argv) == 1 and not argv[0].startswith("-"):
        try:
            counts, feeds, problems = verify_log(argv[0])
        except (Bad, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{'ok' if not problems else 'FAILED'}: {counts['records']} records, "
              f"{counts['entries']} entries in {feeds} feeds, {counts['forks']} fork proofs, "
              f"{counts['absent']} payloads not held, {counts['erased']} erased, "
              f"{counts['deletions']} deletions")
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
