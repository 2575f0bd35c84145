#!/usr/bin/env python3
"""Rebuild the vector files in this directory from the sources' git
repositories (see README.md for the commits):

    extract.py WYCHEPROOF_GIT SPECCHECK_GIT CCTV_GIT DALEK_GIT

Each argument is a git directory; files are read at HEAD. rfc8032.txt is
typed from the RFC and not rebuilt here.

Output lines: id key msg sig expect tags seed, space-separated, hex for
bytes, "-" for an empty field."""
import json
import subprocess
import sys


def show(git, path):
    return subprocess.run(
        ["git", "--git-dir", git, "show", "HEAD:" + path],
        check=True, capture_output=True).stdout.decode()


def commit(git):
    return subprocess.run(
        ["git", "--git-dir", git, "rev-parse", "HEAD"],
        check=True, capture_output=True).stdout.decode().strip()


def field(s):
    return s if s else "-"


def write(name, header, rows):
    with open(name, "w") as f:
        for line in header:
            f.write("# " + line + "\n")
        f.write("# id key msg sig expect tags seed\n")
        for row in rows:
            f.write(" ".join(field(str(x)) for x in row) + "\n")


def wycheproof(git):
    d = json.loads(show(git, "testvectors_v1/ed25519_test.json"))
    rows = []
    for g in d["testGroups"]:
        pk = g["publicKey"]["pk"]
        for t in g["tests"]:
            rows.append((t["tcId"], pk, t["msg"], t["sig"], t["result"],
                         ",".join(t["flags"]), ""))
    write("wycheproof.txt", [
        "Wycheproof testvectors_v1/ed25519_test.json at " + commit(git),
        "expect: the vector's result (valid, invalid, acceptable); tags: its flags",
    ], rows)


# The condition table of the speccheck README, one row per case:
# S, A's order, R's order, cofactored and cofactorless equation.
SPECCHECK_TABLE = [
    "S=0,A=small,R=small,cof=V,cofless=V",
    "S<L,A=small,R=mixed,cof=V,cofless=V",
    "S<L,A=mixed,R=small,cof=V,cofless=V",
    "S<L,A=mixed,R=mixed,cof=V,cofless=V",
    "S<L,A=mixed,R=mixed,cof=V,cofless=X",
    "S<L,A=mixed,R=L,cof=V*,cofless=X",
    "S>L,A=L,R=L,cof=V,cofless=V",
    "S>>L,A=L,R=L,cof=V,cofless=V",
    "S<L,A=mixed,R=small*,cof=V,cofless=V,non-canonical-R-reduced-for-hash",
    "S<L,A=mixed,R=small*,cof=V,cofless=V,non-canonical-R",
    "S<L,A=small*,R=mixed,cof=V,cofless=V,non-canonical-A-reduced-for-hash",
    "S<L,A=small*,R=mixed,cof=V,cofless=V,non-canonical-A",
]


def speccheck(git):
    cases = json.loads(show(git, "cases.json"))
    assert len(cases) == len(SPECCHECK_TABLE)
    rows = [(i, c["pub_key"], c["message"], c["signature"], "none",
             SPECCHECK_TABLE[i], "") for i, c in enumerate(cases)]
    write("speccheck.txt", [
        "ed25519-speccheck cases.json at " + commit(git),
        "expect: none (the source prescribes no verdict); tags: the README's",
        "condition table (S range, orders of A and R, whether the cofactored",
        "and cofactorless equations hold)",
    ], rows)


# CCTV's flags, shortened.
CCTV_FLAGS = {
    "low_order_A": "loA",
    "low_order_R": "loR",
    "non_canonical_A": "ncA",
    "non_canonical_R": "ncR",
    "low_order_component_A": "lcA",
    "low_order_component_R": "lcR",
    "low_order_residue": "residue",
    "reencoded_k": "rek",
}


def cctv(git):
    vs = json.loads(show(git, "ed25519/ed25519vectors.json"))
    rows = [(v["number"], v["key"], v["msg"].encode().hex(), v["sig"], "none",
             ",".join(CCTV_FLAGS[f] for f in v["flags"] or []), "")
            for v in vs]
    write("cctv.txt", [
        "C2SP CCTV ed25519/ed25519vectors.json at " + commit(git),
        "expect: none (the source gives flags, not verdicts); tags: its flags,",
        "shortened: " + ", ".join(f"{v}={k}" for k, v in CCTV_FLAGS.items()),
    ], rows)


def dalek(git):
    rows = []
    for i, line in enumerate(show(git, "ed25519-dalek/TESTVECTORS").splitlines()):
        sk, pk, msg, sigmsg, _ = line.split(":")
        assert sigmsg[128:] == msg and sk[64:] == pk
        rows.append((i, pk, msg, sigmsg[:128], "valid", "", sk[:64]))
    write("dalek.txt", [
        "ed25519-dalek TESTVECTORS (SUPERCOP sign.input) at " + commit(git),
        "expect: valid (every line is a signature made by the seed)",
    ], rows)


if __name__ == "__main__":
    w, s, c, d = sys.argv[1:5]
    wycheproof(w)
    speccheck(s)
    cctv(c)
    dalek(d)
