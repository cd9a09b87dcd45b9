"""The demo sink of deploy/docker-compose.yml: answers 200 {"ok": true} to every request and prints it.

It runs in the switchyard-worker container's network namespace, so the worker reaches it on
http://127.0.0.1:8080, the address config/workflows/demo-sink.yaml posts to (the same as `make sink`).
See what arrives with: docker compose -f deploy/docker-compose.yml logs -f sink
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The headers worth seeing; the others are left out to keep the output short.
SHOWN = ("content-type", "user-agent", "idempotency-key", "authorization",
         "webhook-id", "webhook-timestamp", "webhook-signature")


class Sink(BaseHTTPRequestHandler):
    def _handle(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        lines = [f"{self.command} {self.path}"]
        lines += [f"  {name}: {self.headers[name]}" for name in SHOWN if name in self.headers]
        if body:
            lines.append("  " + body.decode("utf-8", "replace"))
        print("\n".join(lines), flush=True)
        reply = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args):
        pass  # one block per request is printed by _handle already


if __name__ == "__main__":
    host, _, port = os.environ.get("SINK_LISTEN", "127.0.0.1:8080").rpartition(":")
    print(f"sink: listening on {host}:{port}", file=sys.stderr, flush=True)
    ThreadingHTTPServer((host, int(port)), Sink).serve_forever()
