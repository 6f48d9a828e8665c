#!/usr/bin/env python3
"""Commit-to-delivery latency of Sluice's SSE endpoint and Redis sink.

  deliver_latency.py sse ADDR SINK COUNT TIMEOUT [CLIENTS]
      CLIENTS (default 1) SSE clients read GET /v1/sinks/SINK/events from ADDR (auth
      "none"); latency = when an event's data is read minus its record's commit_ts.
      Reports over all clients' events.
  deliver_latency.py redis PORT PREFIX COUNT TIMEOUT
      Subscribes to Redis keyspace events (set) for keys under PREFIX; latency = when the
      notification arrives minus the row's `ts` column (clock_timestamp() at insert,
      just before its commit: a slight overestimate). Values are read at the end.
Prints one key=value line. Clocks: the same machine's.
"""
import asyncio
import datetime as dt
import json
import socket
import sys
import time


def parse_ts(s):
    s = s.replace(" ", "T").replace("+00:00", "Z").replace("+00", "Z")
    if not s.endswith("Z"):
        s += "Z"
    if "." not in s:
        s = s[:-1] + ".0Z"
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


_SECONDS = {}


def parse_commit_ts(b):
    """`2026-12-02T16:26:01.123456Z` (the envelope's form) as epoch seconds, cheaply: the
    whole-second part is parsed once per second, so the client keeps up at 10k events/s."""
    whole, _, frac = b.partition(b".")
    base = _SECONDS.get(whole)
    if base is None:
        base = dt.datetime.strptime(whole.decode(), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
        _SECONDS[whole] = base
    frac = frac.rstrip(b"Z")
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)


def report(lat, extra=""):
    lat.sort()
    n = len(lat)
    if n == 0:
        sys.exit("no events")
    pct = lambda p: lat[min(n - 1, int(p * n))] * 1000
    print(f"events={n} p50_ms={pct(0.50):.2f} p90_ms={pct(0.90):.2f} p99_ms={pct(0.99):.2f} max_ms={lat[-1]*1000:.2f}{extra}")


async def sse_client(host, port, sink, lat, want, deadline, ready):
    r, w = await asyncio.open_connection(host, port, limit=1 << 20)
    w.write(f"GET /v1/sinks/{sink}/events HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await w.drain()
    while (await r.readline()).strip():
        pass  # headers
    ready.append(1)
    got, rest, key = 0, b"", b'"commit_ts":"'
    # Reads what has arrived in one go: every event in it arrived then. Only the commit
    # time is taken out of each event (no JSON parse), so the client is not what lags.
    while got < want and time.time() < deadline:
        try:
            chunk = await asyncio.wait_for(r.read(1 << 20), timeout=max(0.1, deadline - time.time()))
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        seen = time.time()
        data = rest + chunk
        cut = data.rfind(b"\n")
        rest = data[cut + 1:]
        for line in data[:cut].split(b"\n"):
            if line.startswith(b"data:"):
                i = line.find(key) + len(key)
                lat.append(seen - parse_commit_ts(line[i:line.index(b'"', i)]))
                got += 1
    w.close()


async def sse(addr, sink, count, timeout, clients):
    host, port = addr.rsplit(":", 1)
    lat, ready = [], []
    deadline = time.time() + timeout
    tasks = [asyncio.create_task(sse_client(host, int(port), sink, lat, count, deadline, ready)) for _ in range(clients)]
    while len(ready) < clients and time.time() < deadline:
        await asyncio.sleep(0.01)
    print("ready", file=sys.stderr, flush=True)
    await asyncio.gather(*tasks)
    report(lat, f" clients={clients}")


def resp(sock_file):
    line = sock_file.readline()
    t = line[:1]
    if t in (b"+", b"-", b":"):
        return line[1:].strip()
    if t == b"$":
        n = int(line[1:])
        if n < 0:
            return None
        data = sock_file.read(n + 2)
        return data[:-2]
    if t in (b"*", b">"):
        return [resp(sock_file) for _ in range(int(line[1:]))]
    raise RuntimeError(f"bad reply {line!r}")


def cmd(sock, f, *args):
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    return resp(f)


def redis(port, prefix, count, timeout):
    c = socket.create_connection(("127.0.0.1", int(port)))
    cf = c.makefile("rb")
    cmd(c, cf, "CONFIG", "SET", "notify-keyspace-events", "K$")
    s = socket.create_connection(("127.0.0.1", int(port)))
    sf = s.makefile("rb")
    cmd(s, sf, "PSUBSCRIBE", f"__keyspace@0__:{prefix}*")
    print("ready", file=sys.stderr, flush=True)
    seen = {}
    deadline = time.time() + timeout
    s.settimeout(1.0)
    while len(seen) < count and time.time() < deadline:
        try:
            msg = resp(sf)
        except (socket.timeout, TimeoutError):
            continue
        if isinstance(msg, list) and msg[0] == b"pmessage" and msg[3] == b"set":
            key = msg[2].split(b":", 1)[1]
            seen.setdefault(key, time.time())
    lat = []
    keys = list(seen)
    for i in range(0, len(keys), 500):
        vals = cmd(c, cf, "MGET", *keys[i:i + 500])
        for k, v in zip(keys[i:i + 500], vals):
            if v:
                lat.append(seen[k] - parse_ts(json.loads(v)["ts"]))
    report(lat)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sse":
        clients = int(sys.argv[6]) if len(sys.argv) > 6 else 1
        asyncio.run(sse(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), clients))
    else:
        redis(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
