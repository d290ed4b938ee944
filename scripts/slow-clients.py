#!/usr/bin/env python3
"""Slow-client load against one local node (the outside probe's finding 2).

Opens N connections to the node that each send half a request and stop,
keeps them open, and meanwhile asks /healthz on fresh connections; prints
how many slow connections the node accepted, how long it took to close
them, and the /healthz success rate and latencies. Loopback only.

  ulimit -n 65536
  HTTP_MAX_CONNECTIONS=4096 HTTP_HEADER_TIMEOUT_SECS=10 BIND_ADDR=127.0.0.1:8099 \
      cargo run --release -p trekker-node &
  python3 scripts/slow-clients.py --port 8099 --connections 20000
"""
import argparse
import asyncio
import statistics
import time


async def slow_client(host, port, opened, closed):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    opened.append(time.monotonic())
    writer.write(b"POST /api/guest/register-bot HTTP/1.1\r\nHost: node\r\nContent-Le")
    try:
        await writer.drain()
        while await reader.read(4096):
            pass
    except OSError:
        pass
    closed.append(time.monotonic())
    writer.close()


async def health(host, port):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return line.startswith(b"HTTP/1.1 200"), time.monotonic() - started
    except (OSError, asyncio.TimeoutError):
        return False, time.monotonic() - started


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host != "localhost":
        raise SystemExit("loopback only")
    opened, closed = [], []
    start = time.monotonic()
    clients = [asyncio.create_task(slow_client(args.host, args.port, opened, closed)) for _ in range(args.connections)]
    checks = []
    while time.monotonic() - start < args.seconds:
        checks.append(await health(args.host, args.port))
        await asyncio.sleep(0.2)
    await asyncio.wait(clients, timeout=30)
    ok = [latency for good, latency in checks if good]
    lifetimes = sorted(c - start for c in closed)
    print(f"slow connections: {args.connections} attempted, {len(opened)} opened, {len(closed)} closed by the node")
    if lifetimes:
        print(f"closed after: median {statistics.median(lifetimes):.1f} s, last {lifetimes[-1]:.1f} s")
    print(f"/healthz: {len(ok)}/{len(checks)} answered 200", end="")
    if ok:
        ok.sort()
        print(f", p50 {statistics.median(ok) * 1000:.1f} ms, p99 {ok[int(len(ok) * 0.99) - 1] * 1000:.1f} ms")
    else:
        print()


asyncio.run(main())
