"""The README tour's app: answers every GET with $GREETING, on the port moorage gives it."""

import http.server
import os


class Greeter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{os.environ.get('GREETING', 'hi')} from examples/hello\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port = int(os.environ.get("PORT", "8080"))
print(f"listening on :{port}", flush=True)
http.server.ThreadingHTTPServer(("", port), Greeter).serve_forever()
