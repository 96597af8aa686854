"""The mapping file's rules: what parses, what is refused (naming file and key), how routes
match and fields are found."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.mapping import (
    MISSING,
    AmountFormat,
    CompareKind,
    FieldSource,
    Operation,
    Origin,
    extract,
)
from sidecar.errors import MappingError
from sidecar.mapping_file import load_route_table, parse_text

EXAMPLE = Path(__file__).parents[2] / "config" / "mappings" / "example-legacy.toml"

TRANSFER = """
[[route]]
name = "pay"
method = "POST"
path = "/v1/accounts/{account}/payments"
operation = "transfer"
[route.fields]
key = "header:Idempotency-Key"
debit = "path:account"
credit = "request:to"
amount = "request:amount"
currency = "request:currency"
"""


def test_the_example_mapping_loads() -> None:
    table = load_route_table(EXAMPLE)
    assert [r.operation for r in table.routes] == [
        Operation.OPEN_ACCOUNT,
        Operation.TRANSFER,
        Operation.REVERSAL,
        Operation.BALANCE,
    ]
    payment = table.routes[1]
    assert payment.amount_format is AmountFormat.DECIMAL
    assert payment.compare["payment_id"].kind is CompareKind.IGNORE
    assert payment.outcome.rejection_codes["insufficient_funds"] == {"NSF", "INSUFFICIENT_FUNDS"}
    assert table.currencies == {"EUR": 2, "JPY": 0, "BHD": 3}


def test_a_route_matches_its_method_and_path_and_returns_path_parameters() -> None:
    table = parse_text(TRANSFER)
    matched = table.match("post", "/v1/accounts/acc-7/payments?x=1")
    assert matched is not None
    assert matched.route.name == "pay"
    assert matched.path_params == {"account": "acc-7"}
    assert table.match("GET", "/v1/accounts/acc-7/payments") is None
    assert table.match("POST", "/v1/accounts//payments") is None
    assert table.match("POST", "/v1/accounts/acc-7/payments/extra") is None


def test_a_literal_route_wins_over_a_templated_one_of_the_same_shape() -> None:
    table = parse_text(
        TRANSFER.replace("{account}/payments", "{account}/{kind}")
        + TRANSFER.replace('name = "pay"', 'name = "own"')
        .replace("{account}/payments", "mine/payments")
        .replace('debit = "path:account"', 'debit = "request:from"')
    )
    matched = table.match("POST", "/v1/accounts/mine/payments")
    assert matched is not None and matched.route.name == "own"
    other = table.match("POST", "/v1/accounts/x/payments")
    assert other is not None and other.route.name == "pay"


def test_extract_follows_json_paths_and_never_guesses() -> None:
    request = {"a": {"b": [{"c": "10.50"}]}, "n": None}
    assert extract(FieldSource(Origin.REQUEST, "a.b[0].c"), request=request) == "10.50"
    assert extract(FieldSource(Origin.REQUEST, "n"), request=request) is None
    assert extract(FieldSource(Origin.REQUEST, "a.b[1].c"), request=request) is MISSING
    assert extract(FieldSource(Origin.REQUEST, "a.x"), request=request) is MISSING
    assert extract(FieldSource(Origin.ANSWER, "a"), request=request) is MISSING
    headers = {"Idempotency-Key": "k1"}
    assert extract(FieldSource(Origin.HEADER, "idempotency-key"), headers=headers) == "k1"
    assert extract(FieldSource(Origin.PATH, "id"), path_params={"id": "7"}) == "7"
    assert extract(FieldSource(Origin.QUERY, "q"), query={}) is MISSING


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (('operation = "transfer"', 'operation = "teleport"'), "route[0].operation", "one of"),
        (('credit = "request:to"\n', ""), "route[0].fields.credit", "transfer needs this field"),
        (('debit = "path:account"', 'debit = "path:nope"'), "route[0].fields.debit", "{nope}"),
        (('credit = "request:to"', 'credit = "body:to"'), "route[0].fields.credit", "origin"),
        (('credit = "request:to"', 'credit = "request:a..b"'), "route[0].fields.credit", "path"),
        (('method = "POST"', 'method = "BREW"'), "route[0].method", "one of"),
        (("{account}/payments", "{account}/{account}"), "route[0].path", "appears twice"),
        (('name = "pay"', 'name = "pay"\ncolour = "red"'), "route[0].colour", "unknown key"),
        (('name = "pay"', 'name = "pay"\nhook = "not a path"'), "route[0].hook", "dotted path"),
    ],
)
def test_a_bad_route_is_refused_naming_the_key(
    edit: tuple[str, str], key: str, problem: str
) -> None:
    text = TRANSFER.replace(*edit)
    assert text != TRANSFER
    with pytest.raises(MappingError) as caught:
        parse_text(text, "legacy.toml")
    assert caught.value.source == "legacy.toml"
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"legacy.toml: {key}: ")


@pytest.mark.parametrize("field", ["amount", "balance", "overdraft_limit"])
def test_an_ignore_rule_on_a_money_field_is_refused(field: str) -> None:
    with pytest.raises(MappingError, match="is money"):
        parse_text(TRANSFER + f'[route.compare]\n{field} = "ignore"\n')


def test_a_tolerance_rule_needs_a_whole_number_of_minor_units() -> None:
    table = parse_text(TRANSFER + "[route.compare]\namount = { tolerance_minor = 1 }\n")
    rule = table.routes[0].compare["amount"]
    assert (rule.kind, rule.tolerance_minor) == (CompareKind.TOLERANCE, 1)
    with pytest.raises(MappingError, match="tolerance_minor"):
        parse_text(TRANSFER + "[route.compare]\namount = { tolerance_minor = -1 }\n")


@pytest.mark.parametrize(
    ("compare", "problem"),
    [
        ("amount = { tolerance_minor = 1000000000 }", "from 0 to 100"),
        ("reference = { tolerance_minor = 1 }", "applies to money"),
    ],
)
def test_a_tolerance_is_for_money_and_small(compare: str, problem: str) -> None:
    with pytest.raises(MappingError, match=problem):
        parse_text(TRANSFER + f"[route.compare]\n{compare}\n")


def test_route_names_are_unique_and_codes_exact() -> None:
    other = TRANSFER.replace("/payments", "/refunds")
    with pytest.raises(MappingError, match="names another route"):
        parse_text(TRANSFER + other)
    with pytest.raises(MappingError, match="three capital letters"):
        parse_text('[currencies]\n"USD\\n" = 2\n' + TRANSFER)


def test_two_routes_for_one_method_and_path_are_refused() -> None:
    with pytest.raises(MappingError, match="already mapped by route 'pay'") as caught:
        parse_text(TRANSFER + TRANSFER.replace('name = "pay"', 'name = "again"'))
    assert caught.value.key == "route[1].path"


def test_a_status_cannot_mean_both_accepted_and_rejected() -> None:
    text = TRANSFER.replace(
        'operation = "transfer"',
        'operation = "transfer"\naccepted_statuses = [200]\nrejected_statuses = [200, 402]',
    )
    with pytest.raises(MappingError, match="accepted and rejected"):
        parse_text(text)


def test_files_that_cannot_be_used_say_so(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="no such file"):
        load_route_table(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[route]\n")
    with pytest.raises(MappingError, match="not valid TOML"):
        load_route_table(broken)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(MappingError, match="at least one"):
        load_route_table(empty)


def test_a_hook_must_name_an_importable_callable(tmp_path: Path) -> None:
    path = tmp_path / "hooked.toml"
    path.write_text(TRANSFER.replace('name = "pay"', 'name = "pay"\nhook = "json:nothing_here"'))
    with pytest.raises(MappingError, match="no callable nothing_here") as caught:
        load_route_table(path)
    assert caught.value.key == "route[0].hook"
    path.write_text(TRANSFER.replace('name = "pay"', 'name = "pay"\nhook = "json:dumps"'))
    assert load_route_table(path).routes[0].hook == "json:dumps"


@given(st.lists(st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), min_size=1, max_size=4))
def test_every_literal_path_matches_itself_and_nothing_longer(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    table = parse_text(
        TRANSFER.replace("/v1/accounts/{account}/payments", path).replace(
            'debit = "path:account"', 'debit = "request:from"'
        )
    )
    assert table.match("POST", path) is not None
    assert table.match("POST", path + "/") is not None  # a trailing slash, same resource
    assert table.match("POST", path + "/more") is None
