#!/usr/bin/env python3
"""The SQLite FTS5 side of the search benchmark (standard library only).

Usage: fts5.py DOCS QUERIES DB. DOCS holds one document per line, QUERIES
one query per line (1 to 3 words, all required). Indexes the documents in
one transaction (porter stemming, like the kappadb view's English
stemmer), runs each query for the 10 best matches by bm25 with a snippet,
and prints documents/s, p50/p99 latency, bytes on disk and the time to
rebuild the index.
"""

import os
import sqlite3
import sys
import time


def percentile(sorted_values, p):
    i = round((len(sorted_values) - 1) * p)
    return sorted_values[min(i, len(sorted_values) - 1)]


def main():
    docs_path, queries_path, db_path = sys.argv[1:4]
    with open(docs_path, encoding="utf-8") as f:
        docs = [line.rstrip("\n") for line in f]
    with open(queries_path, encoding="utf-8") as f:
        queries = [line.strip() for line in f if line.strip()]
    if os.path.exists(db_path):
        os.remove(db_path)
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE VIRTUAL TABLE notes USING fts5(body, tokenize='porter unicode61')")
    t = time.perf_counter()
    with con:
        con.executemany("INSERT INTO notes(body) VALUES (?)", ((d,) for d in docs))
    index_s = time.perf_counter() - t
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    lat = []
    hits = 0
    for q in queries:
        match = " AND ".join('"%s"' % w.replace('"', '""') for w in q.split())
        t = time.perf_counter()
        rows = con.execute(
            "SELECT rowid, snippet(notes, 0, '[', ']', '...', 16) FROM notes "
            "WHERE notes MATCH ? ORDER BY rank LIMIT 10",
            (match,),
        ).fetchall()
        lat.append((time.perf_counter() - t) * 1000.0)
        hits += len(rows)
    lat.sort()

    size = os.path.getsize(db_path)
    t = time.perf_counter()
    with con:
        con.execute("INSERT INTO notes(notes) VALUES ('rebuild')")
    rebuild_s = time.perf_counter() - t
    con.close()

    n = len(docs)
    print("  index     %.1f s, %.0f documents/s" % (index_s, n / index_s))
    print(
        "  queries   p50 %.2f ms, p99 %.2f ms (limit 10, with snippets; %d hits)"
        % (percentile(lat, 0.5), percentile(lat, 0.99), hits)
    )
    print("  on disk   %d bytes (%.0f per document, text included)" % (size, size / n))
    print("  rebuild   %.1f s (FTS5 'rebuild' from its own content)" % rebuild_s)


if __name__ == "__main__":
    main()
