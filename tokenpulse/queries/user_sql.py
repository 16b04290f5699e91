"""What a user may run through ``/api/sql`` and ``tokenpulse sql``: one statement that only reads.

ClickHouse's ``readonly = 1`` (set on the connection user queries run on) refuses writes, DDL,
setting changes and table functions that reach outside (``file``, ``url``, ...). It does not stop
what the *client* does or what is not a query: in the embedded engine the client is this process,
so ``SELECT ... INTO OUTFILE`` writes any file the service can write, ``KILL QUERY`` kills the
writer's inserts and ``SYSTEM STOP MERGES`` is accepted (all three tried against chDB). So before
a user statement reaches the engine it must:

* be one statement (a trailing ``;`` is allowed);
* start with ``SELECT``, ``WITH``, ``SHOW``, ``DESCRIBE``/``DESC``, ``EXPLAIN`` or ``EXISTS``
  (or ``(`` before one of them), which leaves out ``KILL``, ``SYSTEM``, ``INSERT``, ``SET``, ...;
* have no ``INTO OUTFILE`` clause.

Words are read outside string literals, quoted identifiers and comments, so ``SELECT 'kill'`` or a
column named ``system`` pass. Anything the tokenizer cannot read (an unterminated literal or
comment) is refused.
"""

from __future__ import annotations

import re

from tokenpulse.queries import QueryError

FIRST_WORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})


def tokens(sql: str) -> list[str]:
    """Upper-cased words and single punctuation characters outside literals and comments.
    Literals and quoted identifiers become ``'`` and ``"``."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i) or ch == "#":
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise QueryError("unterminated /* comment")
            i = j + 2
        elif ch in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise QueryError(f"unterminated {ch} quote")
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # a doubled quote inside the literal
                        j += 2
                        continue
                    break
                j += 1
            out.append("'" if ch == "'" else '"')
            i = j + 1
        elif ch.isalnum() or ch == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            out.append(sql[i:j].upper())
            i = j
        else:
            out.append(ch)
            i += 1
    return out


def check(sql: str) -> None:
    """Raise QueryError naming why ``sql`` is not a single read-only statement."""
    toks = tokens(sql)
    while toks and toks[-1] == ";":
        toks.pop()
    if not toks:
        raise QueryError("no statement")
    if ";" in toks:
        raise QueryError("one statement at a time (found ';' between statements)")
    first = next((t for t in toks if t != "("), "")
    if first not in FIRST_WORDS:
        raise QueryError(f"only read-only statements may run here ({', '.join(sorted(FIRST_WORDS))}); "
                         f"got {first or toks[0]!r}")
    for a, b in zip(toks, toks[1:]):
        if a == "INTO" and b == "OUTFILE":
            raise QueryError("INTO OUTFILE is not allowed: results come back in the response "
                             "(format=json|csv|tsv)")


_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)", re.IGNORECASE)


def output_format(sql: str) -> str | None:
    """The statement's own ``FORMAT`` clause (ClickHouse's format name, as written), or None.

    ClickHouse answers in that format whatever the client asked for, so callers pass the output
    through rather than parse it as the format they asked for (which printed column names as data)."""
    toks = tokens(sql)
    while toks and toks[-1] == ";":
        toks.pop()
    if len(toks) < 2 or toks[-2] != "FORMAT":
        return None
    # the name as written (format names are case-sensitive): the last FORMAT <name> that the tokens saw
    names = [m.group(1) for m in _FORMAT.finditer(sql) if m.group(1).upper() == toks[-1]]
    return names[-1] if names else None


def content_type(fmt: str) -> str:
    """A Content-Type for a ClickHouse output format."""
    f = fmt.lower()
    if f.startswith("json"):
        return "application/x-ndjson" if "eachrow" in f or "lines" in f else "application/json"
    if f.startswith("csv"):
        return "text/csv; charset=utf-8"
    if f.startswith("tsv") or f.startswith("tabseparated"):
        return "text/tab-separated-values; charset=utf-8"
    if f in ("parquet", "arrow", "arrowstream", "native", "rowbinary", "orc", "avro", "protobuf", "msgpack"):
        return "application/octet-stream"
    return "text/plain; charset=utf-8"
