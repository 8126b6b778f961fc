"""A loopback proxy in front of `transformers serve` that drops an empty `stop` list.

EuroEval 16.x always sends `"stop": []`; transformers 5.24's server answers that with HTTP 500
(no stop strings to tokenize). Usage: python strip_stop_proxy.py PORT UPSTREAM_URL
"""

import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, UPSTREAM = int(sys.argv[1]), sys.argv[2].rstrip("/")


class Forward(BaseHTTPRequestHandler):
    def do_GET(self):
        self._forward(None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            request = json.loads(body)
            if isinstance(request, dict) and request.get("stop") == []:
                del request["stop"]
                body = json.dumps(request).encode()
        except ValueError:
            pass
        self._forward(body)

    def _forward(self, body):
        request = urllib.request.Request(
            UPSTREAM + self.path, data=body, method=self.command, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Forward).serve_forever()
