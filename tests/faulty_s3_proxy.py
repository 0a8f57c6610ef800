"""A fault-injecting HTTP proxy for S3 tests: it sits on 127.0.0.1 in front of the moto server and, for a fixed,
seeded share of requests, resets the connection, loses the answer of a request the server carried out, answers
503 SlowDown or 500 InternalError, or stalls before answering. Every other request goes through unchanged.

The n-th request a proxy sees always gets the same fate (one seeded random stream, drawn under a lock in
arrival order), so a run's share of faults is fixed; which request is the n-th depends on thread timing.
`script` queues exact fates for the next requests, before the random ones: a test's single fault, or a burst.
`drop_headers` makes it a store that ignores a request header altogether, e.g. `If-None-Match` (a store that
does not honour conditional creates: a second create-once PUT replaces the first object).

    with FaultyS3Proxy(upstream, seed=7, drop=0.05, slowdown=0.05) as proxy:
        ... point AWS_ENDPOINT_URL / --s3-endpoint at proxy.endpoint ...
    proxy.injected  # Counter of the faults actually injected, by kind

Run as a script it serves until killed (for trying the CLI by hand):
    python -m tests.faulty_s3_proxy http://127.0.0.1:5000 --drop 0.05 --slowdown 0.05
"""

from __future__ import annotations

import argparse
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULT_KINDS = ("drop", "cut", "slowdown", "internal", "stall")  # what may pass: drawn at random shares
# S3's error answers: throttling and an internal error, both documented as retryable; and access denied, which
# no retry fixes (only scripted, to show such an answer is not retried).
ERROR_ANSWERS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not to the request or response relayed.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}


class _Reset(Exception):
    """The handler reset its client connection on purpose: end this connection quietly."""


class FaultyS3Proxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 (a free port) that injects faults into a share of requests.

    drop: the connection is reset (RST) before the request reaches the server, as a load balancer that gave up does.
    cut: the server carries the request out, then the connection is reset halfway through the answer's body (before
        its first byte when it has none): a write that happened although the client never heard so.
    slowdown: a 503 with S3's `SlowDown` error, what S3 answers when a prefix is throttled.
    internal: a 500 with S3's `InternalError`.
    denied: a 403 with S3's `AccessDenied` (scripted only: a fault no retry can fix).
    stall: the answer is held back `stall_s` seconds, then sent (a client with a shorter timeout gives up first).
    drop_headers: request headers never relayed (case-insensitive), on every request.
    """

    def __init__(self, upstream: str, seed: int = 0, stall_s: float = 2.0, drop_headers: tuple[str, ...] = (),
                 **shares: float):
        parsed = urlparse(upstream)
        if parsed.hostname != "127.0.0.1":
            raise ValueError(f"the proxy only relays to 127.0.0.1, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self.stall_s = stall_s
        self.drop_headers = {name.lower() for name in drop_headers}
        self.dropped: Counter = Counter()  # header name -> requests it was taken out of
        self._lock = threading.Lock()
        self.configure(seed, **shares)
        self._outage_until = 0.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def configure(self, seed: int = 0, **shares: float) -> None:
        """New fault shares (kind -> share of requests), counted and drawn afresh from `seed`."""
        unknown = set(shares) - set(FAULT_KINDS)
        if unknown or sum(shares.values()) > 1:
            raise ValueError(f"fault shares must be of {FAULT_KINDS} and sum to at most 1, not {shares}")
        with self._lock:
            self.shares = {kind: float(shares.get(kind, 0.0)) for kind in FAULT_KINDS}
            self._random = random.Random(seed)
            self._scripted: deque[str] = deque()
            self.requests = 0
            self.injected: Counter = Counter()
            self.log: list[tuple[str, str, str | None]] = []  # (method, path, fault) of every request

    def script(self, fates: list[str | None]) -> None:
        """The next len(fates) requests get these fates (None: relayed unchanged), in order, before the random
        plan resumes."""
        unknown = set(fates) - set(FAULT_KINDS) - set(ERROR_ANSWERS) - {None}
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}")
        with self._lock:
            self._scripted.extend(fates)

    def outage(self, seconds: float) -> None:
        """Reset every connection for the next `seconds`: the endpoint is down for that long."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds

    def next_fault(self, method: str, path: str) -> str | None:
        """The fate of the next request: a fault kind, or None to relay it unchanged."""
        with self._lock:
            self.requests += 1
            drawn = self._drawn(self._random.random())  # drawn for every request: the n-th one's fate is fixed
            if time.monotonic() < self._outage_until:
                fault = "drop"
            else:
                fault = self._scripted.popleft() if self._scripted else drawn
            if fault:
                self.injected[fault] += 1
            self.log.append((method, path, fault))
            return fault

    def _drawn(self, roll: float) -> str | None:
        for kind in FAULT_KINDS:
            if roll < self.shares[kind]:
                return kind
            roll -= self.shares[kind]
        return None

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, str, list, bytes]:
        """Send the request to the upstream server; return (status, reason, headers, body) of its answer."""
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            relayed = {name: value for name, value in headers.items() if name.lower() not in HOP_BY_HOP}
            for name in [name for name in relayed if name.lower() in self.drop_headers]:
                del relayed[name]
                with self._lock:
                    self.dropped[name.lower()] += 1
            connection.request(method, path, body=body or None, headers=relayed, encode_chunked=False)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def start(self) -> "FaultyS3Proxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "FaultyS3Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients use it: one connection carries many requests

    def do_request(self) -> None:
        proxy: FaultyS3Proxy = self.server.proxy
        body = self._read_body()
        fault = proxy.next_fault(self.command, self.path)
        if fault == "drop":
            self._reset()
        if fault in ERROR_ANSWERS:
            self._answer_error(*ERROR_ANSWERS[fault])
            return
        if fault == "stall":
            time.sleep(proxy.stall_s)
        status, reason, headers, payload = proxy.forward(self.command, self.path, self.headers, body)
        if fault == "cut":
            if payload and self.command != "HEAD":
                self._answer(status, reason, headers, payload[:len(payload) // 2], length=len(payload))
            self._reset()
        self._answer(status, reason, headers, payload)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_request

    def _read_body(self) -> bytes:
        """The request body as sent: by Content-Length, or raw chunks (relayed still chunk-encoded)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                size_line = self.rfile.readline()
                raw += size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers (S3's trailing checksums), up to the empty line
                        line = self.rfile.readline()
                        raw += line
                        if line in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, reason: str, headers: list, payload: bytes, length: int | None = None) -> None:
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP | {"transfer-encoding", "content-length", "date", "server"}:
                self.send_header(name, value)
        if self.command == "HEAD":  # no body, but the object's length, as the upstream gave it
            length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _answer_error(self, status: int, reason: str, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>FAULTYPROXY</RequestId></Error>").encode()
        self._answer(status, reason, [("Content-Type", "application/xml")], body)

    def _reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a peer that crashed or a load balancer that gave up does."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        raise _Reset

    def handle(self) -> None:
        try:
            super().handle()
        except (_Reset, ConnectionError, TimeoutError):
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):  # the socket was reset on purpose, or by the client
            pass

    def log_message(self, *args) -> None:
        pass  # one line per request would drown a test's output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("upstream", help="the S3 server on 127.0.0.1, e.g. http://127.0.0.1:5000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall-s", type=float, default=2.0)
    parser.add_argument("--drop-header", action="append", default=[], metavar="NAME",
                        help="a request header never relayed, e.g. If-None-Match (repeatable)")
    for kind in FAULT_KINDS:
        parser.add_argument(f"--{kind}", type=float, default=0.0, help=f"share of requests that get a {kind}")
    args = parser.parse_args()
    shares = {kind: getattr(args, kind) for kind in FAULT_KINDS}
    with FaultyS3Proxy(args.upstream, args.seed, args.stall_s, tuple(args.drop_header), **shares) as proxy:
        print(proxy.endpoint, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
