#!/usr/bin/env python3
"""A webhook receiver for trying the service: prints every POST it gets and answers 200.

    python3 examples/receiver.py [PORT]      (default 8080, on 127.0.0.1)
"""
import http.server
import sys


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"POST {self.path}", flush=True)
        for name, value in self.headers.items():
            print(f"  {name}: {value}", flush=True)
        print(f"  body: {body!r}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
print(f"receiving on http://127.0.0.1:{port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
