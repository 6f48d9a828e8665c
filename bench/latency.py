#!/usr/bin/env python3
"""Tails a Sluice JSON-lines sink and reports commit-to-sink latency.

For each record, latency = the moment its line is seen complete in the file minus its
`commit_ts` (PostgreSQL's commit time; same machine, same clock). Lines of
pg_recvlogical with test_decoding and include-timestamp ("COMMIT 744 (at 2026-11-22
01:02:03.456789+00)") are understood too, one per transaction: the reference consumer. The file is polled every
0.1 ms, which bounds the measurement's own error. Stops after COUNT records or TIMEOUT s.
usage: latency.py FILE COUNT [TIMEOUT [SKIP]]   -> prints one key=value line
SKIP lines at the start of the file (a warm-up) are not counted.
"""
import datetime as dt
import json
import os
import sys
import time


def parse_ts(s):
    # 2026-11-22T01:02:03.456789Z
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def commit_time(line):
    """Commit time of a change record, or of a test_decoding COMMIT line; None otherwise."""
    if line.startswith(b"{"):
        return parse_ts(json.loads(line)["commit_ts"])
    if line.startswith(b"COMMIT") and b"(at " in line:
        text = line.split(b"(at ", 1)[1].rstrip(b")").decode()
        text = text.replace(" ", "T", 1)
        if text.endswith("+00"):
            text = text[:-3]
        if "." not in text:
            text += ".0"
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.timezone.utc).timestamp()
    return None


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    skip = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            sys.exit("no sink file")
        time.sleep(0.001)
    lat = []
    buf = b""
    with open(path, "rb") as f:
        while len(lat) < count and time.time() < deadline:
            chunk = f.read()
            if not chunk:
                time.sleep(0.0001)
                continue
            seen = time.time()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if skip > 0:
                    skip -= 1
                    continue
                t = commit_time(line) if line else None
                if t is not None:
                    lat.append(seen - t)
                    if os.environ.get("LAT_SPIKES") and seen - t > 0.01:
                        print(f"spike at {t:.3f}: {1000 * (seen - t):.1f} ms", file=sys.stderr)
    lat.sort()
    n = len(lat)
    if n == 0:
        sys.exit("no records")
    pct = lambda p: lat[min(n - 1, int(p * n))] * 1000
    print(f"records={n} p50_ms={pct(0.50):.2f} p90_ms={pct(0.90):.2f} p99_ms={pct(0.99):.2f} max_ms={lat[-1]*1000:.2f}")


if __name__ == "__main__":
    main()
