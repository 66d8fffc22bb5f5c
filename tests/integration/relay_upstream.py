"""A stand-in for an upstream HTTPS API, run on a lab VM behind the nginx relay (standard library only).

    python3 relay_upstream.py PORT CERT KEY

GET /v1/echo answers 200 with the Host and whether an Authorization header came, as JSON. GET /v1/stream sends one
server-sent event, then waits until GET /release arrives (at most 30 s), then sends the last one ("last", or
"never-released" when no release came): a client that reads the first event before it asks for /release, and
then gets "last", has proved that nothing between it and this server buffers.
"""

import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASED = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/release":
            RELEASED.set()
            self._send(200, "application/json", json.dumps({"released": True}).encode())
        elif self.path == "/v1/echo":
            seen = {"host": self.headers.get("Host"), "authorization": "Authorization" in self.headers}
            self._send(200, "application/json", json.dumps(seen).encode())
        elif self.path == "/v1/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            self.wfile.write(b"data: first\n\n")
            self.wfile.flush()
            released = RELEASED.wait(30)
            self.wfile.write(b"data: last\n\n" if released else b"data: never-released\n\n")
            self.wfile.flush()
            RELEASED.clear()
        else:
            self._send(404, "text/plain", b"no such path\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
