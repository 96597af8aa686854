"""``ledger-sidecar serve`` as deployed: JSON lines on standard output, one request_completed
per request, and OTEL_SDK_DISABLED=true quiet even with a collector address that answers
nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from tests.e2e.test_cli import ROOT, schema  # noqa: F401 - the fixture


class Legacy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def wait_until_answering(
    url: str, process: subprocess.Popen[str] | subprocess.Popen[bytes]
) -> None:
    """Poll ``url`` until it answers 200, while ``process`` runs, for at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url) as answer:
                assert answer.status == 200
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port for a child process to listen on, below the kernel's ephemeral range: a port
    the kernel handed out (bind to 0) can be taken, before the child binds it, as the source
    port of any outgoing connection on the machine, which failed a fresh-clone CI run once
    (address already in use). Checked bindable, and never handed out twice in one run."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, max(10_001, low))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def test_serve_logs_json_lines_and_stays_quiet_with_tracing_disabled(
    schema: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    legacy = HTTPServer(("127.0.0.1", 0), Legacy)
    threading.Thread(target=legacy.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "sidecar.toml"  # its own schema, and any free port for the admin API
    config.write_text(f'[database]\nschema = "{schema}"\n[admin]\nport = 0\n')
    env = {
        **os.environ,
        "LEDGER_SIDECAR_CONFIG": str(config),
        "LEGACY_URL": f"http://127.0.0.1:{legacy.server_address[1]}",
        "OTEL_SDK_DISABLED": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
    }
    mapping = str(ROOT / "config" / "mappings" / "example-legacy.toml")
    server = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--mapping", mapping],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/_sidecar/health", server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the shadow worker (its own process) is up
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
                if "ledger_sidecar_shadow_worker_up 1.0" in answer.read().decode():
                    break
            time.sleep(0.2)
        for n in range(3):
            url = f"http://127.0.0.1:{port}/v1/accounts/ACC-{n}/balance"
            with urllib.request.urlopen(url) as answer:
                assert answer.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        legacy.shutdown()
        legacy.server_close()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == len(out.splitlines())  # every line of standard output is JSON
    completed = [line for line in lines if line["event"] == "request_completed"]
    assert [line["account_id"] for line in completed] == ["ACC-0", "ACC-1", "ACC-2"]
    assert all(line["operation"] == "balance" and line["mode"] == "legacy" for line in completed)
    assert completed[0]["trace_id"] is None  # tracing is off: no ids, and no noise
    noise = [x for x in (out + err).splitlines() if "xport" in x or "Traceback" in x]
    assert noise == []
    # lifecycle: each part says when it starts and when it has stopped
    lifecycle = {(line["event"], line.get("role")) for line in lines}
    assert {("started", "proxy"), ("stopped", "proxy")} <= lifecycle
    assert {("started", "shadow_worker"), ("stopped", "shadow_worker")} <= lifecycle, out
