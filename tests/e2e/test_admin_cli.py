"""The admin surface as an operator meets it: ``ledger-sidecar serve`` running, the first admin
token bootstrapped, then every change through ``ledger-sidecar admin ...`` (which speaks to the
admin API), refusals with their exit codes, ``ledger verify`` over the audit chain, and a
schema-driven fuzzer (schemathesis, from the served OpenAPI document) finding no 5xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.e2e.processes import Processes
from tests.e2e.test_cli import ROOT, cli, schema  # noqa: F401 - the fixture
from tests.e2e.test_serve_telemetry import free_port, wait_until_answering

MAPPING = ROOT / "config" / "mappings" / "example-legacy.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def start_stack(
    schema_name: str, tmp_path: Path, processes: Processes
) -> tuple[dict[str, str], str, str]:
    """The demo legacy service and ``serve`` (legacy mode, a mapping): the environment that
    points commands at them, and the admin API's URL."""
    legacy_port, sidecar_port, admin_port = free_port(), free_port(), free_port()
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[database]\nschema = "{schema_name}"\n'
        f'[proxy]\nlegacy_url = "http://127.0.0.1:{legacy_port}"\nport = {sidecar_port}\n'
        f'mode = "legacy"\nmapping = "{MAPPING}"\n'
        f"[admin]\nport = {admin_port}\nflag_poll_s = 0.2\n"
    )
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "LEDGER_SIDECAR_CONFIG": str(config)}
    env.pop("LEGACY_URL", None)
    env.pop(TOKEN, None)
    python = [sys.executable, "-m", "sidecar.cli"]
    legacy = processes.start(
        "legacy",
        *python,
        "demo",
        "legacy",
        "--port",
        str(legacy_port),
        "--customers",
        "20",
        env=env,
    )
    wait_until_answering(f"http://127.0.0.1:{legacy_port}/_legacy/health", legacy)
    sidecar = processes.start("sidecar", *python, "serve", env=env)
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until_answering(f"{admin}/admin/v1/openapi.json", sidecar)
    return env, admin, f"http://127.0.0.1:{sidecar_port}"


TOKEN = "LEDGER_SIDECAR_TOKEN"


def test_the_operator_shell_over_the_admin_api(
    schema: str,  # noqa: F811
    tmp_path: Path,
    processes: Processes,
) -> None:
    env, _, proxy = start_stack(schema, tmp_path, processes)
    reason = ["--reason", "e2e"]
    created = cli(
        "admin", "--json", "token-create", "--bootstrap", "--name", "root", "--role", "admin",
        *reason, env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    root = json.loads(created.stdout)["token"]
    again = cli(
        "admin", "token-create", "--bootstrap", "--name", "two", "--role", "admin", *reason, env=env
    )
    assert again.returncode == 1 and "admin_exists" in again.stderr

    anonymous = cli("admin", "modes", env=env)
    assert anonymous.returncode == 2 and TOKEN in anonymous.stderr
    env[TOKEN] = root

    pilot = cli(
        "admin", "set-cohort", "pilot", "--mode", "shadow", "--accounts", "CUST-00001",
        *reason, env=env,
    )  # fmt: skip
    assert pilot.returncode == 0, pilot.stderr
    assert "pilot" in pilot.stdout and "flag version 1" in pilot.stdout
    evaluated = cli("admin", "--json", "evaluate", "CUST-00001", env=env)
    assert json.loads(evaluated.stdout)["reason"] == "TARGETING_MATCH"
    too_soon = cli("admin", "set-default", "--to", "ledger-primary", *reason, env=env)
    assert too_soon.returncode == 1 and "flip_required" in too_soon.stderr
    operator = cli(
        "admin", "--json", "token-create", "--name", "op", "--role", "operator", *reason, env=env
    )
    op_env = {**env, TOKEN: json.loads(operator.stdout)["token"]}
    forbidden = cli("admin", "set-default", "--to", "shadow", *reason, env=op_env)
    assert forbidden.returncode == 1 and "forbidden" in forbidden.stderr

    audit = cli("admin", "--json", "audit", env=env)
    records = json.loads(audit.stdout)["records"]
    assert [(r["action"], r["allowed"]) for r in records] == [
        ("token.create", True),  # the bootstrap
        ("token.create", False),  # the second bootstrap, refused
        ("flag.set_cohort", True),
        ("flag.set_default", False),  # ledger-primary: a flip, not a setting
        ("token.create", True),
        ("flag.set_default", False),  # the operator
    ]
    table = cli("admin", "audit", env=env)
    assert "REFUSED (forbidden)" in table.stdout

    verified = cli("ledger", "verify", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(verified.stdout)["checks"]}
    assert checks["audit_chain"]["ok"] and "6 admin actions" in checks["audit_chain"]["detail"]

    ready = cli("readiness", env=env)
    assert ready.returncode == 4, ready.stderr  # INCONCLUSIVE: nothing compared yet
    assert "readiness of everyone: INCONCLUSIVE" in ready.stdout
    assert "monetary_divergences" in ready.stdout and "time_in_shadow" in ready.stdout
    with urllib.request.urlopen(f"{proxy}/metrics") as answer:  # the cutover dashboard's view
        scraped = answer.read().decode()
    assert 'readiness_verdict{scope="everyone",verdict="INCONCLUSIVE"} 1.0' in scraped
    assert 'readiness_check_ok{check="verification",scope="everyone"} 1.0' in scraped
    dry = cli("flip", "--to", "shadow", "--dry-run", *reason, env=env)
    assert (
        dry.returncode == 0 and "dry run, nothing changed: default: legacy -> shadow" in dry.stdout
    )
    flipped = cli("flip", "--to", "shadow", *reason, env=env)
    assert flipped.returncode == 0 and "flipped default: legacy -> shadow" in flipped.stdout
    back = cli("flip", "--to", "legacy", *reason, env=env)
    assert back.returncode == 0, back.stderr
    gated = cli("flip", "--to", "ledger-primary", *reason, env=env)
    assert gated.returncode == 1 and "not_ready" in gated.stderr  # nothing compared: no GO
    assert "readiness of everyone: INCONCLUSIVE" in gated.stderr  # the report says why

    replayed = cli("admin", "replay", "--wait", "--reason", "check the mapping", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "from offset 0: done" in replayed.stdout and "divergence kind" in replayed.stdout
    listed = cli("admin", "--json", "replays", env=env)
    assert [r["state"] for r in json.loads(listed.stdout)["replays"]] == ["done"]

    down = cli("admin", "--url", f"http://127.0.0.1:{free_port()}", "modes", env=env)
    assert down.returncode == 3
    # legacy mode with a mapping: the worker runs, ready for the flag to turn shadowing on
    assert "the shadow applier runs as its own process" in (tmp_path / "sidecar.log").read_text()


def test_a_schema_driven_fuzzer_finds_no_server_error(
    schema: str,  # noqa: F811
    tmp_path: Path,
    processes: Processes,
) -> None:
    env, admin, _ = start_stack(schema, tmp_path, processes)
    created = cli(
        "admin", "--json", "token-create", "--bootstrap", "--name", "fuzz", "--role", "admin",
        "--reason", "fuzzing", env=env,
    )  # fmt: skip
    token = json.loads(created.stdout)["token"]
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{admin}/admin/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    print(run.stdout[-1500:])  # the fuzzer's summary, with -s
    # nothing of ours failed (aiohttp's own parser logs the malformed requests it refuses)
    ours = [
        line
        for line in (tmp_path / "sidecar.log").read_text().splitlines()
        if '"logger": "sidecar' in line and '"level": "ERROR"' in line
    ]
    assert ours == []
