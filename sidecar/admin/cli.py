"""``ledger-sidecar admin ...``: the operator's shell over the admin API.

Every command but one is an HTTP call to ``/admin/v1`` (so the CLI and the API can never
disagree): the token comes from ``LEDGER_SIDECAR_TOKEN``, the address from ``--url`` or the
``[admin]`` settings. The exception is ``admin token create --bootstrap``, which writes the
first admin token straight to the database, and only while no admin token exists (the API
needs a token to make one); it is audited as actor ``bootstrap``.

Exit codes: 0 done (``readiness``: GO); 1 refused (the API's error code and message are
printed); 2 bad usage or no token; 3 the admin API or the database cannot be reached;
``readiness`` also 4 for INCONCLUSIVE and 5 for NO-GO.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from sidecar.admin.api import Checker
from sidecar.admin.openapi import DOCUMENT, PREFIX
from sidecar.config import Settings
from sidecar.domain.audit import AuditRecord, Role
from sidecar.domain.flags import Mode
from sidecar.errors import ConfigError, SidecarError
from sidecar.report import table

TOKEN_ENV = "LEDGER_SIDECAR_TOKEN"


class AdminRefused(SidecarError):
    """The admin API refused the request; ``code`` is its error code."""

    def __init__(self, status: int, code: str, message: str, document: Any = None) -> None:
        super().__init__(f"{status} {message}")
        self.code = code
        self.status = status
        #: the API's whole answer (a refused flip carries the readiness report)
        self.document = document


class AdminUnreachable(SidecarError):
    code = "admin_unreachable"


async def call(
    settings: Settings, args: argparse.Namespace, method: str, path: str, body: Any = None
) -> Any:
    """One admin API request with the operator's token; its JSON answer, or AdminRefused."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"{TOKEN_ENV}: set it to an admin API token (lsk_...)")
    base = (args.url or f"http://{settings.admin.host}:{settings.admin.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, f"{base}/admin/v1{path}", json=body, headers=headers) as answer,
        ):
            text = await answer.text()
            try:
                document = json.loads(text) if text else None
            except ValueError:
                document = None
            if answer.status >= 400:
                error = document.get("error", {}) if isinstance(document, dict) else {}
                message = error.get("message") or text[:200] or answer.reason or ""
                code = error.get("code", "http_error")
                raise AdminRefused(answer.status, code, message, document)
            if document is None:
                raise AdminRefused(
                    answer.status, "not_json", f"the answer is not JSON: {text[:200]}"
                )
            return document
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AdminUnreachable(f"the admin API at {base} cannot be reached: {exc}") from exc


def _print(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)


def _query(**values: Any) -> str:
    given = {k: v for k, v in values.items() if v is not None}
    return "?" + urlencode(given) if given else ""


# --- modes --------------------------------------------------------------------------------


def _modes_text(document: dict[str, Any]) -> str:
    rows = [["(default)", document["default"], "every account no cohort holds"]]
    for cohort in document["cohorts"]:
        if "percent" in cohort:
            holds = cohort.get("holds")
            scope = f"{cohort['percent']} % of accounts (sticky)"
            if holds and holds["from_percent"] != "0":
                scope += f", the {holds['from_percent']}-{holds['to_percent']} % slice"
        else:
            scope = f"{len(cohort['accounts'])} listed account(s)"
        rows.append([cohort["name"], cohort["mode"], scope])
    return table(["cohort", "mode", "accounts"], rows) + f"\n\nflag version {document['version']}"


async def _modes(settings: Settings, args: argparse.Namespace) -> int:
    document = await call(settings, args, "GET", "/modes")
    _print(args, document, _modes_text(document))
    return 0


async def _set_default(settings: Settings, args: argparse.Namespace) -> int:
    body = {"mode": args.to, "reason": args.reason}
    document = await call(settings, args, "PUT", "/modes/default", body)
    _print(args, document, _modes_text(document) + f" (audit record {document['audit_seq']})")
    return 0


async def _set_cohort(settings: Settings, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"mode": args.mode, "reason": args.reason}
    if args.percent is not None:
        body["percent"] = args.percent
    if args.accounts is not None:
        body["accounts"] = [a for a in args.accounts.split(",") if a]
    document = await call(settings, args, "PUT", f"/modes/cohorts/{quote(args.name)}", body)
    _print(args, document, _modes_text(document) + f" (audit record {document['audit_seq']})")
    return 0


async def _remove_cohort(settings: Settings, args: argparse.Namespace) -> int:
    path = f"/modes/cohorts/{quote(args.name)}" + _query(reason=args.reason)
    document = await call(settings, args, "DELETE", path)
    _print(args, document, _modes_text(document) + f" (audit record {document['audit_seq']})")
    return 0


async def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    document = await call(
        settings, args, "GET", "/modes/evaluation" + _query(account_id=args.account)
    )
    text = table(
        ["account", "mode", "reason", "cohort"],
        [[args.account, document["variant"], document["reason"], document["cohort"] or ""]],
    )
    _print(args, document, text)
    return 0


# --- divergences, audit, tokens -------------------------------------------------------------


async def _triage(settings: Settings, args: argparse.Namespace) -> int:
    body = {"state": args.state, "reason": args.reason}
    if args.note:
        body["note"] = args.note
    document = await call(settings, args, "POST", f"/divergences/{args.seq}/triage", body)
    _print(args, document, f"divergence {args.seq}: {document['state']}")
    return 0


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    path = "/audit" + _query(after_seq=args.after, limit=args.limit, action=args.action)
    document = await call(settings, args, "GET", path)
    rows = [
        [
            r["seq"],
            r["recorded_at"][:19],
            r["actor"],
            r["role"] or "",
            r["action"],
            "yes" if r["allowed"] else f"REFUSED ({(r['refusal'] or {}).get('code')})",
            r["target"] or "",
            (r["reason"] or "")[:40],
        ]
        for r in document["records"]
    ]
    headers = ["seq", "at (UTC)", "actor", "role", "action", "allowed", "target", "reason"]
    _print(args, document, table(headers, rows))
    return 0


async def _tokens(settings: Settings, args: argparse.Namespace) -> int:
    document = await call(settings, args, "GET", "/tokens")
    rows = [
        [
            t["id"],
            t["name"],
            t["role"],
            t["created_at"][:19],
            t["created_by"],
            t["revoked_at"] or "",
        ]
        for t in document["tokens"]
    ]
    headers = ["id", "name", "role", "created (UTC)", "by", "revoked"]
    _print(args, document, table(headers, rows))
    return 0


async def _token_create(settings: Settings, args: argparse.Namespace) -> int:
    if args.bootstrap:
        document = await _bootstrap_token(settings, args)
    else:
        body = {"name": args.name, "role": args.role, "reason": args.reason}
        document = await call(settings, args, "POST", "/tokens", body)
    text = (
        f"token {document['id']} ({document['role']}) for {document['name']}:\n"
        f"{document['token']}\nshown once: keep it in a secret store"
    )
    _print(args, document, text)
    return 0


async def _bootstrap_token(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from sidecar.db.admin_store import AdminExists, PostgresAdminStore
    from sidecar.db.connect import create_pool
    from sidecar.db.migrate import migrate

    if args.role != Role.ADMIN.value:
        raise ConfigError("--bootstrap: makes the first admin token only (--role admin)")
    # the API's own rules for the name and the reason
    body = DOCUMENT["paths"][f"{PREFIX}/tokens"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    for key, value in (("name", args.name), ("reason", args.reason)):
        if any(True for _ in Checker(schema["properties"][key]).iter_errors(value)):
            raise ConfigError(f"--{key}: {value!r} is not allowed (see {PREFIX}/openapi.json)")
    await migrate(settings.database)
    pool = await create_pool(settings.database)
    try:
        store = PostgresAdminStore(pool, Mode(settings.proxy.mode))
        record = AuditRecord("bootstrap", None, "token.create", True, reason=args.reason)
        try:
            token, secret = await store.create_first_admin(args.name, record)
        except AdminExists as exc:
            refusal = {"code": exc.code, "message": exc.message}
            await store.record(replace(record, allowed=False, refusal=refusal))
            raise
    finally:
        await pool.close()
    return {**token.document(), "token": secret}


async def _token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    path = f"/tokens/{quote(args.id)}" + _query(reason=args.reason)
    document = await call(settings, args, "DELETE", path)
    _print(args, document, f"token {document['id']} revoked at {document['revoked_at']}")
    return 0


async def _whoami(settings: Settings, args: argparse.Namespace) -> int:
    document = await call(settings, args, "GET", "/whoami")
    _print(args, document, f"{document['name']} ({document['role']}), token {document['id']}")
    return 0


def _readiness_text(document: dict[str, Any]) -> str:
    marks = {"pass": "ok", "fail": "FAIL", "inconclusive": "?"}
    rows = [
        [
            c["name"],
            marks[c["status"]],
            _plain(c["value"]),
            _plain(c["threshold"]),
            c["window"],
            c["detail"] if len(c["detail"]) <= 90 else c["detail"][:89] + "…",  # --json: whole
        ]
        for c in document["checks"]
    ]
    head = f"readiness of {document['scope']}: {document['verdict']} ({document['reason']})"
    return (
        head + "\n\n" + table(["check", "result", "value", "threshold", "window", "detail"], rows)
    )


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


async def _readiness(settings: Settings, args: argparse.Namespace) -> int:
    document = await call(settings, args, "GET", "/readiness" + _query(cohort=args.cohort))
    _print(args, document, _readiness_text(document))
    return {"GO": 0, "INCONCLUSIVE": 4}.get(document["verdict"], 5)


async def _flip(settings: Settings, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to, "reason": args.reason}
    for key in ("cohort",):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.dry_run:
        body["dry_run"] = True
    if args.force:
        body["force"] = True
    try:
        document = await call(settings, args, "POST", "/flip", body)
    except AdminRefused as exc:
        if exc.code == "not_ready" and exc.document is not None and not args.json:
            print(_readiness_text(exc.document["readiness"]), file=sys.stderr)
        raise
    what = f"{document['scope']}: {document['from']} -> {document['to']}"
    if document["dry_run"]:
        text = f"dry run, nothing changed: {what} {document['outcome']}"
        if document.get("readiness"):
            text += "\n\n" + _readiness_text(document["readiness"])
    else:
        forced = (
            " (FORCED past: " + ", ".join(document["failing_checks"]) + ")"
            if document["forced"]
            else ""
        )
        version, seq = document["flag_version"], document["audit_seq"]
        text = f"flipped {what}{forced}; flag version {version} (audit record {seq})"
    _print(args, document, text)
    return 0


def _replay_text(document: dict[str, Any]) -> str:
    done, total = document["progress"]["done"], document["progress"]["total"]
    lines = [
        f"replay {document['id']} from offset {document['from_seq']}: {document['state']}"
        f" ({done:,}/{total:,} stream records), started by {document['started_by']}"
    ]
    if document["error"]:
        lines.append(f"error: {document['error']}")
    report = document["report"]
    if report:
        before, after = report["divergences_before"], report["divergences_after"]
        kinds = sorted(set(before) | set(after))
        rows = [[k, before.get(k, 0), after.get(k, 0)] for k in kinds]
        lines += ["", table(["divergence kind", "live", "replayed"], rows or [["(none)", 0, 0]])]
        lines.append(f"\nverdicts changed: {report['changed']}")
    return "\n".join(lines)


async def _adjust(settings: Settings, args: argparse.Namespace) -> int:
    body = {
        "debit": args.debit,
        "credit": args.credit,
        "amount": args.amount,
        "currency": args.currency,
        "reason": args.reason,
    }
    if args.key:
        body["key"] = args.key
    document = await call(settings, args, "POST", "/adjustments", body)
    moved = f"{args.amount} {args.currency} from {args.debit} to {args.credit}"
    text = (
        f"{document['key']}: nothing moved, already posted as ledger event {document['ledger_seq']}"
        if document["replayed"]
        else f"{document['key']}: {moved}, ledger event {document['ledger_seq']}"
    ) + f" (audit record {document['audit_seq']})"
    _print(args, document, text)
    return 0


async def _replay_start(settings: Settings, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.from_seq is not None:
        body["from_seq"] = args.from_seq
    document = await call(settings, args, "POST", "/replays", body)
    while args.wait and document["state"] == "running":
        await asyncio.sleep(1.0)
        document = await call(settings, args, "GET", f"/replays/{document['id']}")
        done, total = document["progress"]["done"], document["progress"]["total"]
        if not args.json:
            print(f"stream replayed: {done:,}/{total:,}", file=sys.stderr, flush=True)
    _print(args, document, _replay_text(document))
    return 0 if document["state"] != "failed" else 1


async def _replay_status(settings: Settings, args: argparse.Namespace) -> int:
    if args.id is None:
        document = await call(settings, args, "GET", "/replays")
        text = "\n\n".join(_replay_text(r) for r in document["replays"]) or "no replays yet"
    else:
        document = await call(settings, args, "GET", f"/replays/{quote(args.id)}")
        text = _replay_text(document)
    _print(args, document, text)
    return 0


def add_top_level(groups: Any) -> None:
    """``readiness`` and ``flip``: the release manager's two commands, over the admin API."""
    p = groups.add_parser(
        "readiness", help="the cutover verdict: GO, NO-GO or INCONCLUSIVE, with each check"
    )
    p.add_argument("--cohort", help="a cohort of the flag (default: everyone)")
    p.add_argument("--url", help="the admin API (default: http://<admin.host>:<admin.port>)")
    p.add_argument("--json", action="store_true", help="verdict and checks as JSON")
    p.set_defaults(handler=_readiness)
    p = groups.add_parser(
        "flip", help="move the default or a cohort to a mode; forward into the ledger needs GO"
    )
    p.add_argument("--to", required=True, choices=[m.value for m in Mode])
    p.add_argument("--cohort", help="a cohort of the flag (default: the default mode)")
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    p.add_argument(
        "--force", action="store_true", help="past a failing verdict (admin only; recorded)"
    )
    p.add_argument("--url", help="the admin API (default: http://<admin.host>:<admin.port>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_flip)


def add_parsers(groups: Any) -> None:
    """The ``admin`` command group."""
    admin = groups.add_parser(
        "admin", help="modes, cohorts, triage, tokens and the audit log, over the admin API"
    )
    admin.add_argument("--url", help="the admin API (default: http://<admin.host>:<admin.port>)")
    admin.add_argument("--json", action="store_true", help="print the API's JSON answer")
    commands = admin.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def reason(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reason", required=True, help="why (kept in the audit log)")

    p = commands.add_parser("whoami", help="the token's name and role")
    p.set_defaults(handler=_whoami)
    p = commands.add_parser("modes", help="the flag's default mode and cohorts")
    p.set_defaults(handler=_modes)
    p = commands.add_parser("set-default", help="the mode of accounts no cohort holds")
    p.add_argument("--to", required=True, choices=[m.value for m in Mode])
    reason(p)
    p.set_defaults(handler=_set_default)
    p = commands.add_parser("set-cohort", help="create or change a cohort")
    p.add_argument("name")
    p.add_argument("--mode", required=True, choices=[m.value for m in Mode])
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--percent", help="a sticky share of all accounts (0-100, steps of 0.01)")
    scope.add_argument("--accounts", help="comma-separated account ids")
    reason(p)
    p.set_defaults(handler=_set_cohort)
    p = commands.add_parser("remove-cohort", help="its accounts follow the default again")
    p.add_argument("name")
    reason(p)
    p.set_defaults(handler=_remove_cohort)
    p = commands.add_parser("evaluate", help="the mode one account is in, and why")
    p.add_argument("account")
    p.set_defaults(handler=_evaluate)
    p = commands.add_parser("triage", help="acknowledge, resolve or mark a divergence as noise")
    p.add_argument("seq", type=int, help="the divergence's stream offset (divergences list)")
    p.add_argument("--state", required=True, choices=["acknowledged", "resolved", "expected_noise"])
    p.add_argument("--note", help="how it was resolved (needed to resolve)")
    reason(p)
    p.set_defaults(handler=_triage)
    p = commands.add_parser("audit", help="the audit log, oldest first")
    p.add_argument("--after", type=int, help="records after this seq")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--action", help="only this action (flag.set_default, token.create, ...)")
    p.set_defaults(handler=_audit)
    p = commands.add_parser("adjust", help="a compensating transfer, through the ledger")
    p.add_argument("--debit", required=True, help="the account money leaves")
    p.add_argument("--credit", required=True, help="the account money reaches")
    p.add_argument("--amount", required=True, help="a decimal in the currency's units: 12.34")
    p.add_argument("--currency", required=True)
    p.add_argument(
        "--key", help="idempotency key (default: a new one); the same key twice moves once"
    )
    reason(p)
    p.set_defaults(handler=_adjust)
    p = commands.add_parser("replay", help="replay the stream into a fresh ledger, compare again")
    p.add_argument("--from", dest="from_seq", type=int, help="compare from this offset (default 0)")
    p.add_argument("--wait", action="store_true", help="wait for it, showing progress")
    reason(p)
    p.set_defaults(handler=_replay_start)
    p = commands.add_parser("replays", help="replays started on this instance, or one of them")
    p.add_argument("id", nargs="?")
    p.set_defaults(handler=_replay_status)
    p = commands.add_parser("tokens", help="API tokens (never their secrets)")
    p.set_defaults(handler=_tokens)
    p = commands.add_parser("token-create", help="a new token, shown once")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument(
        "--bootstrap",
        action="store_true",
        help="the first admin token, straight into the database (only while none exists)",
    )
    reason(p)
    p.set_defaults(handler=_token_create)
    p = commands.add_parser("token-revoke", help="revoke a token, at once")
    p.add_argument("id")
    reason(p)
    p.set_defaults(handler=_token_revoke)


__all__ = ["AdminRefused", "AdminUnreachable", "add_parsers", "add_top_level", "call"]
