"""The admin API's OpenAPI 3.1 document: the one definition of its paths, parameters and
bodies. The API validates every request against it (``sidecar.admin.api``), so the served
document and the behaviour cannot disagree; tests fuzz the API from it (schemathesis)."""

from __future__ import annotations

from typing import Any

from sidecar.domain.audit import Role
from sidecar.domain.flags import Mode

PREFIX = "/admin/v1"

REASON = {
    "type": "string",
    "minLength": 3,
    "maxLength": 500,
    "description": "why: kept in the audit log",
}
MODE = {"type": "string", "enum": [m.value for m in Mode]}
ACCOUNT = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"}
COHORT_NAME = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"}
SEQ = {"type": "integer", "minimum": 0, "maximum": 2**62}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}


def _body(properties: dict[str, Any], required: list[str], **rules: Any) -> dict[str, Any]:
    """A JSON body: these properties and no others; ``rules`` add cross-field rules."""
    schema = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **rules,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _answers(ok: int, description: str, *errors: int) -> dict[str, Any]:
    problem = {"$ref": "#/components/responses/Problem"}
    out: dict[str, Any] = {
        str(ok): {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "400": problem,
        "401": problem,
        "403": problem,
        "413": problem,
    }
    for status in errors:
        out[str(status)] = problem
    return out


def _operation(
    operation_id: str,
    summary: str,
    permission: str,
    ok: int = 200,
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    errors: tuple[int, ...] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": f"Needs the `{permission}` permission.",
        "x-permission": permission,
        "responses": _answers(ok, summary, *errors),
    }
    if parameters:
        out["parameters"] = parameters
    if body:
        out["requestBody"] = body
    return out


COHORT_BODY = _body(
    {
        "mode": MODE,
        "percent": {
            "oneOf": [
                {"type": "number", "minimum": 0, "maximum": 100},
                {"type": "string", "pattern": "^(100(\\.0{1,2})?|[0-9]{1,2}(\\.[0-9]{1,2})?)$"},
            ],
            "description": "a sticky share of all accounts, in steps of 0.01",
        },
        "accounts": {"type": "array", "items": ACCOUNT, "minItems": 1, "maxItems": 10000},
        "reason": REASON,
    },
    ["mode", "reason"],
    # exactly one of a share and a list
    oneOf=[{"required": ["percent"]}, {"required": ["accounts"]}],
)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ledger-sidecar admin API",
        "version": "1",
        "description": (
            "Modes and cohorts of the cutover flag, divergence triage, API tokens and the "
            "audit log. Every change writes one audit record in its own transaction; refused "
            "attempts are recorded too."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        f"{PREFIX}/whoami": {
            "get": _operation("whoami", "the token's name and role", "read"),
        },
        f"{PREFIX}/modes": {
            "get": _operation("getModes", "the flag's default mode and cohorts", "read"),
        },
        f"{PREFIX}/modes/evaluation": {
            "get": _operation(
                "evaluateMode",
                "the mode one account is in, with the reason (OpenFeature's vocabulary)",
                "read",
                parameters=[_query("account_id", ACCOUNT, required=True)],
            ),
        },
        f"{PREFIX}/modes/default": {
            "put": _operation(
                "setDefaultMode",
                "set the mode of accounts no cohort holds",
                "change_mode",
                body=_body({"mode": MODE, "reason": REASON}, ["mode", "reason"]),
                errors=(409, 422),
            ),
        },
        f"{PREFIX}/modes/cohorts/{{name}}": {
            "put": _operation(
                "setCohort",
                "create or change a cohort: a share of accounts or a list, in one mode",
                "change_mode",
                parameters=[_path("name", COHORT_NAME)],
                body=COHORT_BODY,
                errors=(409, 422),
            ),
            "delete": _operation(
                "removeCohort",
                "remove a cohort (its accounts follow the default again)",
                "change_mode",
                parameters=[_path("name", COHORT_NAME), _query("reason", REASON, required=True)],
                errors=(404, 409, 422),
            ),
        },
        f"{PREFIX}/readiness": {
            "get": _operation(
                "readiness",
                "the cutover verdict (GO, NO-GO, INCONCLUSIVE) with each check's evidence",
                "read",
                parameters=[_query("cohort", COHORT_NAME)],
                errors=(404,),
            ),
        },
        f"{PREFIX}/flip": {
            "post": _operation(
                "flip",
                "move the default or a cohort to another mode; a step into a mode where the "
                "ledger answers needs a GO (or force, by an admin); back is always allowed",
                "change_mode",
                body=_body(
                    {
                        "to": MODE,
                        "cohort": COHORT_NAME,
                        "reason": REASON,
                        "dry_run": {"type": "boolean", "default": False},
                        "force": {"type": "boolean", "default": False},
                    },
                    ["to", "reason"],
                ),
                errors=(404, 409, 422),
            ),
        },
        f"{PREFIX}/replays": {
            "get": _operation("listReplays", "replays started here, newest last", "read"),
            "post": _operation(
                "startReplay",
                "rebuild a fresh ledger from the stream in a child process and compare again "
                "(live schema only read); watch it with GET /replays/{id}",
                "replay",
                202,
                body=_body({"from_seq": SEQ, "reason": REASON}, ["reason"]),
                errors=(409,),
            ),
        },
        f"{PREFIX}/replays/{{replay_id}}": {
            "get": _operation(
                "getReplay",
                "a replay's state, progress and report",
                "read",
                parameters=[_path("replay_id", {"type": "string", "pattern": "^[0-9a-f]{12}$"})],
                errors=(404,),
            ),
        },
        f"{PREFIX}/divergences": {
            "get": _operation(
                "listDivergences",
                "mismatched comparisons, oldest first, with their triage state",
                "read",
                parameters=[
                    _query("account_id", ACCOUNT),
                    _query("after_seq", SEQ),
                    _query("limit", LIMIT),
                ],
            ),
        },
        f"{PREFIX}/divergences/{{seq}}/triage": {
            "post": _operation(
                "triageDivergence",
                "acknowledge, resolve (with a note) or mark as expected noise",
                "triage",
                parameters=[_path("seq", SEQ)],
                body=_body(
                    {
                        "state": {
                            "type": "string",
                            "enum": ["acknowledged", "resolved", "expected_noise"],
                        },
                        "note": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "reason": REASON,
                    },
                    ["state", "reason"],
                    # resolving says how
                    **{
                        "if": {"properties": {"state": {"const": "resolved"}}},
                        "then": {"required": ["note"]},
                    },
                ),
                errors=(404, 422),
            ),
        },
        f"{PREFIX}/adjustments": {
            "post": _operation(
                "adjust",
                "a compensating transfer through the ledger's posting path, with its audit "
                "record in the same transaction; a transfer the ledger would refuse is not written",
                "adjust",
                201,
                body=_body(
                    {
                        "debit": ACCOUNT,
                        "credit": ACCOUNT,
                        "amount": {
                            "type": "string",
                            "pattern": "^[0-9]{1,18}([.][0-9]{1,18})?$",
                            "description": "a positive decimal in the currency's units",
                        },
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                        "key": {**ACCOUNT, "description": "idempotency key (default: a new one)"},
                        "reason": REASON,
                    },
                    ["debit", "credit", "amount", "currency", "reason"],
                ),
                errors=(409, 422),
            ),
        },
        f"{PREFIX}/audit": {
            "get": _operation(
                "readAudit",
                "the audit log, oldest first, each record with its chain hash",
                "read",
                parameters=[
                    _query("after_seq", SEQ),
                    _query("limit", LIMIT),
                    _query("action", {"type": "string", "pattern": "^[a-z_.]{1,64}$"}),
                ],
            ),
        },
        f"{PREFIX}/tokens": {
            "get": _operation("listTokens", "API tokens (never their secrets)", "manage_tokens"),
            "post": _operation(
                "createToken",
                "a new token; its secret is shown once",
                "manage_tokens",
                201,
                body=_body(
                    {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"},
                        "role": {"type": "string", "enum": [r.value for r in Role]},
                        "reason": REASON,
                    },
                    ["name", "role", "reason"],
                ),
            ),
        },
        f"{PREFIX}/tokens/{{token_id}}": {
            "delete": _operation(
                "revokeToken",
                "revoke a token (at once, everywhere)",
                "manage_tokens",
                parameters=[
                    _path("token_id", {"type": "string", "pattern": "^[a-z0-9]{12}$"}),
                    _query("reason", REASON, required=True),
                ],
                errors=(404,),
            ),
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a token from POST /admin/v1/tokens: lsk_<id>_<secret>",
            }
        },
        "responses": {
            "Problem": {
                "description": "refused: nothing changed",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["error"],
                            "properties": {
                                "error": {
                                    "type": "object",
                                    "required": ["code", "message"],
                                    "properties": {
                                        "code": {"type": "string"},
                                        "message": {"type": "string"},
                                    },
                                }
                            },
                        }
                    }
                },
            }
        },
    },
}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) for every operation in the document."""
    return [
        (method.upper(), path, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    ]


__all__ = ["DOCUMENT", "PREFIX", "operations"]
