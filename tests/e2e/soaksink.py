#!/usr/bin/env python3
"""An accounting SMTP next hop for the soak test (tests/e2e/test_soak.py): Python 3 stdlib only.

Runs as its own process (so it does not share the load generator's interpreter lock) with
asyncio, one coroutine per connection, and records every message it accepts, before it answers
250 to the final dot, as one JSON line in --out:

    {"id": X-Soak-Id, "claimed": X-Soak-SHA256, "sha": SHA-256 of the body as received,
     "size": body octets, "from": MAIL FROM address, "to": [RCPT TO addresses],
     "xclient": {ATTR: value of the XCLIENT of this connection} or null}

The body is everything after the first empty line, dot-stuffing undone. The last line of --out
is {"stats": {...}}: connections, peak concurrent connections, messages, protocol errors (with
the first few offending lines). SIGTERM ends it: the open connections are dropped and the file
is completed.

    soaksink.py --port-file FILE --out FILE [--xclient]

It speaks what the relay needs of a next hop: EHLO (PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES,
SIZE, and with --xclient "XCLIENT ADDR PORT HELO PROTO"), HELO, XCLIENT (answered 220 and a new
session, as Postfix does: EHLO must follow before MAIL), MAIL, RCPT, DATA, RSET, NOOP, QUIT.
Anything else, or a command out of order, is a protocol error: answered 5xx and counted.
"""
import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import sys

NAME = "sink.test"
MAX_LINE = 4096
MAX_BODY = 1 << 20


class Sink:
    def __init__(self, out_path, xclient):
        self.out = open(out_path, "w", buffering=1 << 16)
        self.xclient = xclient
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.messages = 0
        self.errors = 0
        self.error_samples = []
        self.tasks = set()

    def error(self, what):
        self.errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(what)

    def ehlo_lines(self):
        caps = ["PIPELINING", "SIZE %d" % MAX_BODY, "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.xclient:
            caps.append("XCLIENT ADDR PORT HELO PROTO")
        lines = [NAME] + caps
        return "".join("250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", x)
                       for i, x in enumerate(lines)).encode()

    async def handle(self, reader, writer):
        self.tasks.add(asyncio.current_task())
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the relay hung up (it does after QUIT, or when its client went)
        except asyncio.CancelledError:
            pass
        finally:
            self.open -= 1
            self.tasks.discard(asyncio.current_task())
            writer.close()

    async def session(self, reader, writer):
        w = writer.write
        w(b"220 " + NAME.encode() + b" ESMTP soak sink\r\n")
        greeted = False
        xclient = None
        sender = None
        rcpts = []
        while True:
            line = await reader.readline()
            if not line:
                return
            if not line.endswith(b"\r\n") or len(line) > MAX_LINE:
                self.error("bad command line %r" % line[:80])
                w(b"500 5.5.2 bad line\r\n")
                continue
            text = line[:-2].decode("utf-8", errors="replace")
            verb = text.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                greeted = True
                sender, rcpts = None, []
                w(self.ehlo_lines() if verb == "EHLO" else b"250 " + NAME.encode() + b"\r\n")
            elif verb == "XCLIENT" and self.xclient and greeted and sender is None:
                xclient = dict(kv.split("=", 1) for kv in text.split()[1:] if "=" in kv)
                greeted = False  # Postfix: a new session, EHLO again
                w(b"220 " + NAME.encode() + b" ESMTP soak sink\r\n")
            elif verb == "MAIL" and greeted and sender is None:
                m = re.match(r"(?i)MAIL FROM:<(.*?)>", text)
                if not m:
                    self.error("bad MAIL %r" % text)
                    w(b"501 5.5.4 syntax\r\n")
                    continue
                sender = m.group(1)
                w(b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT" and sender is not None:
                m = re.match(r"(?i)RCPT TO:<(.*?)>", text)
                if not m:
                    self.error("bad RCPT %r" % text)
                    w(b"501 5.5.4 syntax\r\n")
                    continue
                rcpts.append(m.group(1))
                w(b"250 2.1.5 Ok\r\n")
            elif verb == "DATA" and rcpts:
                w(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                raw = await self.read_data(reader)
                if raw is None:
                    self.error("DATA over %d octets" % MAX_BODY)
                    return
                self.record(raw, sender, rcpts, xclient)
                sender, rcpts = None, []
                w(b"250 2.0.0 Ok: queued\r\n")
            elif verb == "RSET":
                sender, rcpts = None, []
                w(b"250 2.0.0 Ok\r\n")
            elif verb == "NOOP":
                w(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                w(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                self.error("unexpected %r (greeted=%s sender=%r rcpts=%d)"
                           % (text[:80], greeted, sender, len(rcpts)))
                w(b"503 5.5.1 unexpected command\r\n")
            await writer.drain()

    async def read_data(self, reader):
        """The dot-stuffed body up to the terminating line, without it; None when too large."""
        acc = bytearray()
        while True:
            acc += await reader.readuntil(b".\r\n")
            if acc == b".\r\n":
                return b""
            if acc.endswith(b"\r\n.\r\n"):
                return bytes(acc[:-3])
            if len(acc) > MAX_BODY:
                return None

    def record(self, raw, sender, rcpts, xclient):
        data = raw[1:] if raw.startswith(b"..") else raw
        data = data.replace(b"\r\n..", b"\r\n.")
        head, sep, body = data.partition(b"\r\n\r\n")
        fields = {}
        for h in head.split(b"\r\n"):
            name, _, value = h.partition(b":")
            if name in (b"X-Soak-Id", b"X-Soak-SHA256"):
                fields[name.decode()] = value.strip().decode("ascii", errors="replace")
        if not sep or "X-Soak-Id" not in fields:
            self.error("message without X-Soak-Id (%d octets)" % len(data))
        self.messages += 1
        self.out.write(json.dumps({
            "id": fields.get("X-Soak-Id"), "claimed": fields.get("X-Soak-SHA256"),
            "sha": hashlib.sha256(body).hexdigest(), "size": len(body),
            "from": sender, "to": list(rcpts), "xclient": xclient}) + "\n")

    def finish(self):
        self.out.write(json.dumps({"stats": {
            "connections": self.connections, "peak": self.peak, "messages": self.messages,
            "errors": self.errors, "error_samples": self.error_samples}}) + "\n")
        self.out.close()


async def main_async(args):
    sink = Sink(args.out, args.xclient)
    # The stream limit bounds one readuntil(): a body chunk up to the next ".\r\n" may be the
    # whole body. Command lines are checked against MAX_LINE separately.
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0, backlog=4096,
                                        limit=MAX_BODY + 16)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    for t in list(sink.tasks):
        t.cancel()
    await asyncio.gather(*sink.tasks, return_exceptions=True)
    sink.finish()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--xclient", action="store_true")
    asyncio.run(main_async(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
