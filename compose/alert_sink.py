"""The alert-sink service of compose/docker-compose.yml: the receivers alerts/alertmanager.yml
names (http://alert-sink:8080/page, /ticket, /release, /watchdog) in a demo without a pager.

Each notification Alertmanager posts is printed as one JSON line on standard output (receiver,
status, and each alert's name, severity, status and summary), so `docker compose logs
alert-sink` shows what would have paged whom. Standard library only: it runs in the plain
python image. Bodies over 1 MiB are refused.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BODY_BYTES_MAX = 1 << 20


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_BYTES_MAX:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            self.send_error(400, "a JSON object expected (Alertmanager's webhook payload)")
            return
        print(json.dumps(summary(self.path.strip("/"), payload)), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON line is the record; no access log beside it


def summary(receiver: str, payload: dict[str, Any]) -> dict[str, Any]:
    found = payload.get("alerts")
    alerts: list[Any] = found if isinstance(found, list) else []
    return {
        "receiver": receiver,
        "status": payload.get("status"),
        "alerts": [
            {
                "alertname": alert.get("labels", {}).get("alertname"),
                "severity": alert.get("labels", {}).get("severity"),
                "status": alert.get("status"),
                "summary": alert.get("annotations", {}).get("summary"),
            }
            for alert in alerts
            if isinstance(alert, dict)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    # every interface: Alertmanager posts from another container
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Sink)
    # as PID 1 the process gets no default SIGTERM handling: stop at once on `docker stop`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"event": "started", "port": args.port}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
