#!/usr/bin/env python3
"""How long a new client waits at `--max-connections` behind clients that
keep their connections alive and say nothing.

    bench/cap.py [IDGATE ...]     (default: target/release/idgate)

For each binary: an upstream (Python's HTTP/1.1 server) and `idgate serve`
with `--max-connections N` and `--public-path /` (the gate is not what is
measured) on loopback. N clients (50) each make one request and keep
their connections open and idle; then NEW clients (10) connect at once and
ask once each, and the time until all are answered is printed (a timeout
of LIMIT seconds, 40 by default, past the 30 s header deadline that frees
the places otherwise), with how many of the idle connections idgate closed.
Nothing leaves loopback; no token is needed.
"""

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

N = int(os.environ.get("N", "50"))
NEW = int(os.environ.get("NEW", "10"))
LIMIT = float(os.environ.get("LIMIT", "40"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without this, the second
    # waits out a delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(conn):
    """One GET on `conn`; True once a whole `ok` answer is read."""
    conn.sendall(b"GET /x HTTP/1.1\r\nhost: bench\r\n\r\n")
    got = b""
    while not got.endswith(b"\r\n\r\nok"):
        chunk = conn.recv(4096)
        if not chunk:
            return False
        got += chunk
    return got.startswith(b"HTTP/1.1 200")


def run(idgate):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [idgate, "serve", "--listen", f"127.0.0.1:{port}",
         "--admin-listen", f"127.0.0.1:{admin}",
         "--upstream", f"http://127.0.0.1:{upstream.server_port}",
         "--audience", "https://bench.example", "--member", "allUsers",
         "--jwks-url", "http://127.0.0.1:9/jwks.json",
         "--public-path", "/", "--max-connections", str(N)],
        stdout=subprocess.DEVNULL, stderr=open(os.environ.get("LOG", os.devnull), "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    if ask(probe):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"{idgate} did not answer on :{port}")
            time.sleep(0.05)
        # The same request under the cap, for comparison.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            assert ask(fresh), "a client under the cap was not answered"
        under = time.monotonic() - started
        idle = []
        for _ in range(N):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert ask(conn), "a client under the cap was not answered"
            idle.append(conn)
        started = time.monotonic()
        waits = [None] * NEW

        def newcomer(i):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=LIMIT) as conn:
                    if ask(conn):
                        waits[i] = time.monotonic() - started
            except OSError:
                pass

        threads = [threading.Thread(target=newcomer, args=(i,)) for i in range(NEW)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answered = all(w is not None for w in waits)
        waited = max(w for w in waits) if answered else time.monotonic() - started
        # Which idle connections idgate has closed, a second later.
        time.sleep(1)
        closed = 0
        for conn in idle:
            conn.setblocking(False)
            try:
                closed += conn.recv(1) == b""
            except BlockingIOError:
                pass
            conn.close()
        verdict = f"answered within {waited * 1000:.1f} ms" if answered else f"not all answered in {waited:.1f} s"
        print(f"{idgate}: {N} idle keep-alive clients at --max-connections {N}; "
              f"{NEW} new clients at once {verdict} (one under the cap: {under * 1000:.1f} ms); "
              f"{closed} of the {N} idle connections closed by idgate")
    finally:
        proc.terminate()
        proc.wait()
        upstream.shutdown()


if __name__ == "__main__":
    for binary in sys.argv[1:] or [os.path.join(ROOT, "target/release/idgate")]:
        run(binary)
