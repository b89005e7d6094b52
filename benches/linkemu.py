#!/usr/bin/env python3
"""Link emulator for the benchmarks: a userspace TCP proxy that adds delay and a bandwidth cap.

The kernel here has no netem, so this sits in front of each host's sshd instead:

    linkemu.py --delay-ms 10 --mbit 100 --map 127.0.5.1:22=127.0.3.1:22 --map ...
    linkemu.py --delay-ms 10 --mbit 100 --maps maps.txt      # one LISTEN=TARGET a line

One process serves every map (one listener each), so a 200-host fleet costs one process.

Model, per map ("link", i.e. one emulated host):
- one-way delay: every byte is delivered --delay-ms after it was sent, in each direction,
  so a round trip costs 2 x delay-ms more than on loopback;
- bandwidth: --mbit in each direction, a token bucket per direction of the link, SHARED by
  every connection to that host (a host 20 ms / 100 Mbit away has one 100 Mbit link however
  many connections it carries); --share conn gives every connection its own buckets instead.
  The bucket holds at most max(16 KiB, 5 ms of the rate), so the rate is exact over any
  interval longer than a few ms and bursts are small;
- order is kept (one FIFO delay line per connection direction), half-closes are passed on,
  a reset on one side closes the other;
- bounded memory: a direction stops reading (TCP backpressure reaches the sender) while its
  delay line holds more than --buffer-kb; a slow receiver stalls the delay line the same way.
  Keep --buffer-kb above the bandwidth-delay product (default 4 MiB >> 100 Mbit x 10 ms).

It binds and connects only to 127.0.0.0/8 IPv4 literals and refuses anything else.
Prints "linkemu: ready ..." on stderr once every listener is bound (and writes --ready FILE).
SIGTERM or SIGINT closes the listeners and every connection and exits 0.
"""

import argparse
import asyncio
import collections
import ipaddress
import signal
import socket
import sys

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
READ_CHUNK = 16 * 1024


def fail(msg):
    print(f"linkemu: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_addr(text, what):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"{what} '{text}' is not ADDRESS:PORT (e.g. 127.0.5.1:22)")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        fail(f"{what} '{text}': '{host}' is not an IPv4 address; use a 127.x.y.z literal")
    if ip not in LOOPBACK:
        fail(f"{what} '{text}' is outside 127.0.0.0/8; linkemu only binds and connects to loopback")
    return str(ip), int(port)


def parse_map(text, where):
    listen, sep, target = text.strip().partition("=")
    if not sep:
        fail(f"{where}: map '{text}' is not LISTEN=TARGET (e.g. 127.0.5.1:22=127.0.3.1:22)")
    return parse_addr(listen, f"{where}: listen address"), parse_addr(target, f"{where}: target")


class Bucket:
    """Token bucket in bytes; acquire() waits until n tokens are there. FIFO among waiters."""

    def __init__(self, bytes_per_s):
        self.rate = bytes_per_s
        self.depth = max(READ_CHUNK, bytes_per_s * 0.005)
        self.tokens = self.depth
        self.last = asyncio.get_running_loop().time()
        self.lock = asyncio.Lock()

    async def acquire(self, n):
        loop = asyncio.get_running_loop()
        async with self.lock:
            while True:
                now = loop.time()
                self.tokens = min(self.depth, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


class Direction:
    """One direction of one connection: reader -> (bucket) -> delay line -> writer."""

    def __init__(self, reader, writer, bucket, delay, limit):
        self.reader, self.writer, self.bucket = reader, writer, bucket
        self.delay, self.limit = delay, limit
        self.line = collections.deque()  # (deliver_at, bytes or None for EOF)
        self.held = 0
        self.space = asyncio.Event()  # set by pump_out after it delivered bytes
        self.data = asyncio.Event()  # set by pump_in after it queued bytes

    async def pump_in(self):
        loop = asyncio.get_running_loop()
        chunk = READ_CHUNK if self.bucket is None else int(min(READ_CHUNK, self.bucket.depth))
        while True:
            while self.held > self.limit:
                self.space.clear()
                await self.space.wait()
            data = await self.reader.read(chunk)
            if self.bucket is not None and data:
                await self.bucket.acquire(len(data))
            self.line.append((loop.time() + self.delay, data or None))
            self.held += len(data)
            self.data.set()
            if not data:
                return

    async def pump_out(self):
        loop = asyncio.get_running_loop()
        while True:
            while not self.line:
                self.data.clear()
                await self.data.wait()
            at, data = self.line[0]
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.line.popleft()
            if data is None:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()
            self.held -= len(data)
            self.space.set()


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Link:
    def __init__(self, listen, target, args):
        self.listen, self.target, self.args = listen, target, args
        self.delay = args.delay_ms / 1000.0
        self.rate = args.mbit * 1e6 / 8 if args.mbit > 0 else None
        self.up = self.down = None
        self.tasks = set()

    def buckets(self):
        if self.rate is None:
            return None, None
        if self.args.share == "conn":
            return Bucket(self.rate), Bucket(self.rate)
        if self.up is None:
            self.up, self.down = Bucket(self.rate), Bucket(self.rate)
        return self.up, self.down

    async def handle(self, c_reader, c_writer):
        task = asyncio.current_task()
        self.tasks.add(task)
        s_writer = None
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
            nodelay(c_writer)
            nodelay(s_writer)
            up_b, down_b = self.buckets()
            limit = self.args.buffer_kb * 1024
            up = Direction(c_reader, s_writer, up_b, self.delay, limit)
            down = Direction(s_reader, c_writer, down_b, self.delay, limit)
            pumps = [asyncio.create_task(p()) for p in (up.pump_in, up.pump_out, down.pump_in, down.pump_out)]
            try:
                # Done when both directions delivered their EOF, or at the first error.
                pending = set(pumps)
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        if t.exception() is not None:
                            raise t.exception()
            finally:
                for t in pumps:
                    t.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (ConnectionError, OSError) as e:
            if self.args.verbose:
                print(f"linkemu: {self.listen[0]}:{self.listen[1]}: {e}", file=sys.stderr)
        except asyncio.CancelledError:
            pass
        finally:
            for w in (c_writer, s_writer):
                if w is not None:
                    w.close()
            self.tasks.discard(task)


async def main(args, maps):
    links = [Link(listen, target, args) for listen, target in maps]
    servers = []
    for link in links:
        try:
            servers.append(await asyncio.start_server(link.handle, *link.listen, reuse_address=True, backlog=512))
        except OSError as e:
            for s in servers:
                s.close()
            fail(f"cannot listen on {link.listen[0]}:{link.listen[1]}: {e.strerror}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rate = f"{args.mbit:g} Mbit/s" if args.mbit > 0 else "unlimited"
    msg = (f"linkemu: ready, {len(links)} link(s), {args.delay_ms:g} ms each way, "
           f"{rate} each direction per {'connection' if args.share == 'conn' else 'link'}")
    print(msg, file=sys.stderr, flush=True)
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(msg + "\n")
    await stop.wait()
    for s in servers:
        s.close()
    tasks = [t for link in links for t in link.tasks]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in servers:
        await s.wait_closed()


def cli():
    p = argparse.ArgumentParser(description="TCP link emulator on 127.0.0.0/8: delay + bandwidth cap.")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction (RTT = 2x)")
    p.add_argument("--mbit", type=float, default=0.0, help="bandwidth per direction in Mbit/s, 0 = unlimited")
    p.add_argument("--share", choices=["link", "conn"], default="link",
                   help="bandwidth shared by all connections of a map (link, default) or per connection")
    p.add_argument("--buffer-kb", type=int, default=4096, help="stop reading past this many KiB in a delay line")
    p.add_argument("--map", action="append", default=[], metavar="LISTEN=TARGET")
    p.add_argument("--maps", metavar="FILE", help="file of LISTEN=TARGET lines (# comments)")
    p.add_argument("--ready", metavar="FILE", help="write a line here once every listener is bound")
    p.add_argument("-v", "--verbose", action="store_true", help="log connection errors")
    args = p.parse_args()
    if args.delay_ms < 0 or args.mbit < 0 or args.buffer_kb <= 0:
        fail("--delay-ms and --mbit must be >= 0, --buffer-kb > 0")
    maps = [parse_map(m, "--map") for m in args.map]
    if args.maps:
        try:
            with open(args.maps) as f:
                for n, line in enumerate(f, 1):
                    line = line.split("#", 1)[0].strip()
                    if line:
                        maps.append(parse_map(line, f"{args.maps}:{n}"))
        except OSError as e:
            fail(f"cannot read --maps {args.maps}: {e.strerror}")
    if not maps:
        fail("nothing to proxy: give --map LISTEN=TARGET or --maps FILE")
    seen = set()
    for listen, _ in maps:
        if listen in seen:
            fail(f"listen address {listen[0]}:{listen[1]} appears twice")
        seen.add(listen)
    asyncio.run(main(args, maps))


if __name__ == "__main__":
    cli()
