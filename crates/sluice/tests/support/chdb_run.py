"""Runs SQL statements in order in a current ClickHouse engine, in-process (chdb), so tests
can check the ClickHouse sink's SQL and RowBinary rows against a current release (the
server the tests start, Debian's, is 18.16).

usage: chdb_run.py STEPS.json

STEPS.json is a list of steps, each {"sql": "...", "data": "FILE", "format": "RowBinary"}
where "data" and "format" are optional:
- a step without "data" runs its "sql" as it is;
- a step with "data" is an insert whose rows are the bytes of FILE (relative to the
  directory of STEPS.json), in "format" or else the statement's FORMAT clause (else
  RowBinary). Its "sql" is what the sink sends over HTTP before the rows:
  `INSERT INTO <table> (<columns>) FORMAT RowBinary`.

Standard output: the answer to the last step, in the format its statement asks for
(TabSeparated when it names none; nothing for an insert). On an error: a message naming
the failing step's index (from 0) on standard error, and exit status 1.

Invariants:
- One chdb session in a fresh temporary directory, removed at the end: steps see each
  other's tables, runs see nothing of one another.
- An insert goes through chdb's streaming insert (`Session.send_insert`): the statement
  without its FORMAT clause, then the file's bytes as they are, as a server's HTTP
  interface takes the body of `INSERT ... FORMAT RowBinary`. chdb checks the columns and
  parses the rows as the server would, and fails on bytes left over or missing.
"""

import json
import os
import re
import sys
import tempfile

# `INSERT INTO t (a, b) FORMAT RowBinary`: the statement before FORMAT, and the format.
INSERT = re.compile(r"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)\s*;?\s*$", re.I | re.S)

# Rows are handed to chdb a chunk at a time, so a large file does not sit in memory twice.
CHUNK = 1 << 20


class StepError(Exception):
    pass


def insert(session, step, base):
    m = INSERT.match(step["sql"])
    if not m:
        raise StepError("a step with data must be `INSERT INTO t (columns) FORMAT F`")
    statement, named = m.group(1), m.group(2)
    fmt = step.get("format", named)
    if fmt != named:
        raise StepError(f'"format" is {fmt} but the statement says FORMAT {named}')
    path = os.path.join(base, step["data"])
    with open(path, "rb") as rows, session.send_insert(statement, fmt) as ins:
        while chunk := rows.read(CHUNK):
            ins.append(chunk)
        ins.finish()
    return b""


def run(steps, base):
    from chdb import session as chdb_session

    out = b""
    with tempfile.TemporaryDirectory(prefix="sluice-chdb-") as path:
        session = chdb_session.Session(path)
        try:
            for i, step in enumerate(steps):
                try:
                    if not isinstance(step, dict) or not isinstance(step.get("sql"), str):
                        raise StepError('a step must be an object with "sql"')
                    if "data" in step:
                        out = insert(session, step, base)
                    else:
                        out = session.query(step["sql"], "TabSeparated").bytes()
                except Exception as e:  # chdb raises several kinds; all end the run.
                    sql = step.get("sql") if isinstance(step, dict) else step
                    raise StepError(f"step {i} failed: {sql}\n{e}") from None
        finally:
            session.close()
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(1)
    try:
        with open(sys.argv[1]) as f:
            steps = json.load(f)
        if not isinstance(steps, list):
            raise StepError(f"{sys.argv[1]}: not a list of steps")
        out = run(steps, os.path.dirname(os.path.abspath(sys.argv[1])))
    except Exception as e:
        print(f"chdb_run.py: {e}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
