"""`inferd tenants|keys|budgets|prices|usage|audit`: the governance CLI.

Each command maps its flags to admin operations (`admin_client.AdminCall`) once; the same commands run in
two modes: remote (`--url`, over the admin HTTP API of a running server) and direct (`--state-dir`, on the
SQLite store in-process). Output is a table by default and JSON with `--json`. A created key is printed once;
no other key is ever printed. Exit codes: 0 done, 1 refused by the server or the service, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from inferd.cli import flags as fv  # flag value parsers
from inferd.cli.admin_client import (
    ADMIN_KEY_ENV,
    AdminCall,
    AdminClient,
    AdminError,
    Target,
    UsageError,
    connect,
    query,
    segment,
)
from inferd.cli.flags import Flag, body
from inferd.cli.tables import Column, cols, record, table
from inferd.gateway.admin import AdminService
from inferd.gateway.context import Principal
from inferd.qos import TIERS
from inferd.store.records import PAYLOAD_POLICIES, PERIODS
from inferd.store.sqlite import USAGE_GROUPS

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DEFAULT_AUDIT_LIMIT = 1000


@dataclass(frozen=True)
class Outcome:
    """What a command prints: `data` with `--json`, `text` otherwise."""

    data: Any
    text: str


Handler = Callable[[argparse.Namespace, AdminClient], Outcome]


LIMIT_FLAGS = (
    Flag("--rpm", "rpm", "requests per minute (none: no limit)", {"type": fv.limit}),
    Flag("--tpm", "tpm", "tokens per minute (none: no limit)", {"type": fv.limit}),
    Flag("--max-concurrent", "max_concurrent", "requests in flight at once", {"type": fv.limit}),
    Flag("--max-tokens", "max_tokens", "ceiling on one request's completion tokens", {"type": fv.limit}),
)
TENANT_FLAGS = (
    *LIMIT_FLAGS,
    Flag("--payload-logging", "payload_logging", "what the audit log keeps of each inference",
         {"choices": PAYLOAD_POLICIES}),
    Flag("--disabled", "disabled", "refuse every key of the tenant",
         {"action": argparse.BooleanOptionalAction}),
)  # fmt: skip
KEY_FLAGS = (
    Flag("--tenant", "tenant", "the tenant that owns the key", {"required": True}),
    Flag("--models", "models", "model name patterns the key may use, comma-separated (default *)",
         {"action": "extend", "type": fv.patterns}),
    Flag("--roles", "roles", "comma-separated: user (default), admin", {"type": fv.roles}),
    *LIMIT_FLAGS,
    Flag("--expires-in", "expires_in_s", "expiry from now: 30d, 12h, 3600s", {"type": fv.duration}),
    Flag("--name", "name", "a label for the key"),
    Flag("--priority", "priority", "tier of requests without x-inferd-priority (default interactive)",
         {"choices": TIERS}),
)  # fmt: skip
BUDGET_TARGET_FLAGS = (
    Flag("--tenant", "tenant", "the tenant", {"required": True}),
    Flag("--period", "period", "budget period (default month)", {"choices": PERIODS, "default": "month"}),
    Flag("--per-workflow", "scope", "cap each workflow of the tenant separately",
         {"action": "store_const", "const": "workflow", "default": "tenant"}),
)  # fmt: skip
BUDGET_FLAGS = (
    *BUDGET_TARGET_FLAGS,
    Flag("--tokens", "max_tokens", "tokens (prompt + completion) per period", {"type": fv.count}),
    Flag("--cost", "max_cost", "cost per period, in the price currency", {"type": fv.amount}),
    Flag("--requests", "max_requests", "requests per period", {"type": fv.count}),
)
PRICE_FLAGS = (
    Flag("--model", "model", "model name (* = default price)", {"required": True}),
    Flag("--prompt-per-1k", "prompt_per_1k", "per 1000 prompt tokens", {"type": fv.amount}),
    Flag("--completion-per-1k", "completion_per_1k", "per 1000 completion tokens", {"type": fv.amount}),
    Flag("--per-inference", "per_inference", "per tensor inference", {"type": fv.amount}),
)

TENANT_COLUMNS = cols("name", "rpm", "tpm", "concurrent=max_concurrent", "max_tokens",
                      "payload=payload_logging", "disabled", "created")  # fmt: skip
KEY_COLUMNS = cols("key_id", "tenant", "name", "roles", "models", "limits.rpm", "limits.tpm",
                   "concurrent=limits.max_concurrent", "limits.max_tokens", "expires=expires_at",
                   "priority", "disabled", "created")  # fmt: skip
BUDGET_COLUMNS = cols("tenant", "scope", "period", "max_tokens", "max_cost", "max_requests", "used_tokens",
                      "used_cost", "used_requests", "in_flight=in_flight_tokens", "resets=resets_at",
                      "note")  # fmt: skip
PRICE_COLUMNS = cols("model", "prompt_per_1k", "completion_per_1k", "per_inference")
USAGE_COLUMNS = cols("requests", "prompt=prompt_tokens", "completion=completion_tokens",
                     "cached=cached_tokens", "cost", "errors", "retries", "retry_rate",
                     "latency_ms=mean_latency_ms")  # fmt: skip
AUDIT_COLUMNS = cols("time", "action", "tenant", "key=key_id", "target", "outcome",
                     "request=request_id", "detail")  # fmt: skip


# -- commands: each maps its flags to admin calls ----------------------------------------------------------


ListCall = Callable[[AdminService, str | None], Any]
SetCall = Callable[[AdminService, Principal, Mapping[str, Any]], Any]
DeleteCall = Callable[[AdminService, Principal, str], None]


def _lister(path: str, direct: ListCall, columns: Sequence[Column], what: str) -> Handler:
    """`... list [--tenant T]`."""

    def handler(args: argparse.Namespace, client: AdminClient) -> Outcome:
        tenant: str | None = getattr(args, "tenant", None)
        rows = client.run(AdminCall("GET", path, lambda s, a: direct(s, tenant), query(tenant=tenant)))
        return Outcome(rows, table(rows, columns, f"no {what}"))

    return handler


def _deleter(path: str, arg: str, direct: DeleteCall, done: str) -> Handler:
    """`... delete NAME`: `done` is the message, with `{}` for the name."""

    def handler(args: argparse.Namespace, client: AdminClient) -> Outcome:
        name: str = getattr(args, arg)
        client.run(AdminCall("DELETE", f"{path}/{segment(name)}", lambda s, a: direct(s, a, name)))
        return Outcome({"deleted": name}, done.format(repr(name)))

    return handler


def _setter(path: str, flags: Sequence[Flag], direct: SetCall, what: str) -> Handler:
    """`... set --flags`: create or replace one record."""

    def handler(args: argparse.Namespace, client: AdminClient) -> Outcome:
        spec = body(args, flags)
        result = client.run(AdminCall("PUT", path, lambda s, a: direct(s, a, spec), body=spec))
        return Outcome(result, f"set {what}\n{record(result)}")

    return handler


def _get_tenant(name: str) -> AdminCall:
    return AdminCall("GET", f"/tenants/{segment(name)}", lambda s, a: s.get_tenant(name))


def _put_tenant(client: AdminClient, name: str, spec: dict[str, Any], verb: str) -> Outcome:
    call = AdminCall("PUT", f"/tenants/{segment(name)}", lambda s, a: s.put_tenant(a, name, spec), body=spec)
    tenant = client.run(call)
    return Outcome(tenant, f"{verb} tenant {name!r}\n{record(tenant)}")


def tenants_show(args: argparse.Namespace, client: AdminClient) -> Outcome:
    tenant = client.run(_get_tenant(args.name))
    return Outcome(tenant, record(tenant))


def tenants_create(args: argparse.Namespace, client: AdminClient) -> Outcome:
    try:
        client.run(_get_tenant(args.name))
    except AdminError as exc:
        if not exc.not_found:
            raise
    else:
        raise AdminError(f"tenant {args.name!r} exists; change it with 'inferd tenants update'")
    return _put_tenant(client, args.name, body(args, TENANT_FLAGS), "created")


def tenants_update(args: argparse.Namespace, client: AdminClient) -> Outcome:
    """The tenant's current settings with the given flags changed (the API replaces the whole tenant)."""
    changes = body(args, TENANT_FLAGS)
    if not changes:
        raise UsageError("nothing to change: give at least one setting (see 'inferd tenants update -h')")
    current = client.run(_get_tenant(args.name))
    merged = {f.key: current[f.key] for f in TENANT_FLAGS} | changes
    return _put_tenant(client, args.name, merged, "updated")


def keys_create(args: argparse.Namespace, client: AdminClient) -> Outcome:
    spec = body(args, KEY_FLAGS)
    created = client.run(AdminCall("POST", "/keys", lambda s, a: s.create_key(a, spec), body=spec))
    details = {k: v for k, v in created.items() if k != "key"}
    text = (
        f"created API key {created['key_id']} for tenant {created['tenant']!r}.\n"
        "The key is shown only this once; store it now:\n\n"
        f"    {created['key']}\n\n{record(details)}"
    )
    return Outcome(created, text)


def _keys_set_disabled(disabled: bool) -> Handler:
    """`keys disable|enable KEY_ID`."""

    def handler(args: argparse.Namespace, client: AdminClient) -> Outcome:
        key_id: str = args.key_id
        patch = {"disabled": disabled}
        path = f"/keys/{segment(key_id)}"
        key = client.run(AdminCall("PATCH", path, lambda s, a: s.update_key(a, key_id, patch), body=patch))
        return Outcome(key, f"{'disabled' if disabled else 'enabled'} API key {key_id}\n{record(key)}")

    return handler


def budgets_delete(args: argparse.Namespace, client: AdminClient) -> Outcome:
    tenant, scope, period = args.tenant, args.scope, args.period
    params = query(tenant=tenant, scope=scope, period=period)
    client.run(
        AdminCall("DELETE", "/budgets", lambda s, a: s.delete_budget(a, tenant, scope, period), params)
    )
    return Outcome({"deleted": params}, f"deleted the {period} {scope} budget of tenant {tenant!r}")


def usage(args: argparse.Namespace, client: AdminClient) -> Outcome:
    tenant, since, by = args.tenant, args.since, args.by
    params = query(tenant=tenant, since=since, by=by)
    rows = client.run(AdminCall("GET", "/usage", lambda s, a: s.usage(tenant, since, by), params))
    return Outcome(rows, table(rows, (*cols(by), *USAGE_COLUMNS), "no usage"))


def audit(args: argparse.Namespace, client: AdminClient) -> Outcome:
    tenant, since, action, limit = args.tenant, args.since, args.action, args.limit
    params = query(tenant=tenant, since=since, action=action, limit=limit)
    rows = client.run(AdminCall("GET", "/audit", lambda s, a: s.audit(tenant, since, action, limit), params))
    return Outcome(rows, table(rows, AUDIT_COLUMNS, "no audit entries"))


# -- registration and running ----------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where")
    where.add_argument("--url", help="a running server's HTTP address (remote mode), e.g. http://host:8000")
    where.add_argument(
        "--state-dir",
        help="the state folder (direct mode without --url; default ./.inferd when it holds a database); "
        "with --url, its admin.key is the key used",
    )
    where.add_argument(
        "--admin-key", help=f"admin API key for remote mode (prefer ${ADMIN_KEY_ENV} or admin.key)"
    )
    where.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return common


def _filters(parser: argparse.ArgumentParser, *names: str) -> None:
    helps = {
        "tenant": "only this tenant",
        "since": "from this time on: 7d, 24h, 30m, an ISO date, or unix seconds (default: all time)",
    }
    for name in names:
        parser.add_argument(f"--{name}", help=helps[name])


def add_governance_commands(sub: SubParsers) -> None:
    """Register `tenants`, `keys`, `budgets`, `prices`, `usage` and `audit` on `inferd`'s subparsers."""
    common = _common()

    def leaf(
        group: SubParsers, name: str, help: str, handler: Handler, flags: Sequence[Flag] = (), arg: str = ""
    ) -> argparse.ArgumentParser:
        parser = group.add_parser(name, help=help, description=help, parents=[common])
        if arg:
            parser.add_argument(arg)
        for flag in flags:
            flag.add(parser)
        parser.set_defaults(governance=handler)
        return parser

    def group(name: str, help: str) -> SubParsers:
        return sub.add_parser(name, help=help, description=help).add_subparsers(
            dest=f"{name}_command", required=True
        )

    tenants = group("tenants", "tenants: limits, payload logging, disabled flag")
    list_tenants = _lister("/tenants", lambda s, t: s.list_tenants(), TENANT_COLUMNS, "tenants")
    delete_tenant = _deleter("/tenants", "name", AdminService.delete_tenant, "deleted tenant {}")
    leaf(tenants, "list", "list the tenants", list_tenants)
    leaf(tenants, "show", "show one tenant", tenants_show, arg="name")
    leaf(tenants, "create", "create a tenant", tenants_create, TENANT_FLAGS, "name")
    leaf(tenants, "update", "change the given settings of a tenant", tenants_update, TENANT_FLAGS, "name")
    leaf(tenants, "delete", "delete a tenant with its keys and budgets", delete_tenant, arg="name")

    keys = group("keys", "API keys")
    list_keys = _lister("/keys", AdminService.list_keys, KEY_COLUMNS, "API keys")
    revoke_key = _deleter("/keys", "key_id", AdminService.revoke_key, "revoked API key {}")
    leaf(keys, "create", "create an API key (printed once)", keys_create, KEY_FLAGS)
    _filters(leaf(keys, "list", "list API keys (never the keys themselves)", list_keys), "tenant")
    leaf(keys, "revoke", "delete an API key for good", revoke_key, arg="key_id")
    leaf(keys, "disable", "refuse an API key until enabled", _keys_set_disabled(True), arg="key_id")
    leaf(keys, "enable", "accept a disabled API key again", _keys_set_disabled(False), arg="key_id")

    budgets = group("budgets", "token, cost and request budgets per tenant and period")
    set_budget = _setter("/budgets", BUDGET_FLAGS, AdminService.set_budget, "budget")
    list_budgets = _lister("/budgets", AdminService.list_budgets, BUDGET_COLUMNS, "budgets")
    leaf(budgets, "set", "set (create or replace) a budget", set_budget, BUDGET_FLAGS)
    _filters(leaf(budgets, "list", "list budgets (with usage, from a server)", list_budgets), "tenant")
    leaf(budgets, "delete", "delete a budget", budgets_delete, BUDGET_TARGET_FLAGS)

    prices = group("prices", "per-model prices")
    set_price = _setter("/prices", PRICE_FLAGS, AdminService.set_price, "price")
    list_prices = _lister("/prices", lambda s, t: s.list_prices(), PRICE_COLUMNS, "prices")
    delete_price = _deleter("/prices", "model", AdminService.delete_price, "deleted the price of {}")
    leaf(prices, "set", "set (create or replace) a model's price", set_price, PRICE_FLAGS)
    leaf(prices, "list", "list prices", list_prices)
    leaf(prices, "delete", "delete a model's price", delete_price, PRICE_FLAGS[:1])

    usage_parser = leaf(sub, "usage", "usage from the ledger, summed per group", usage)
    _filters(usage_parser, "tenant", "since")
    usage_parser.add_argument("--by", choices=USAGE_GROUPS, default="model", help="group by (default model)")
    audit_parser = leaf(sub, "audit", "entries of the audit log, oldest first", audit)
    _filters(audit_parser, "tenant", "since")
    audit_parser.add_argument("--action", help="action pattern, * matches anything: 'auth.*', 'admin.key_*'")
    audit_parser.add_argument(
        "--limit", type=fv.positive, default=DEFAULT_AUDIT_LIMIT, help="the latest N entries (default 1000)"
    )


def run_governance(args: argparse.Namespace) -> int:
    """Run the parsed governance command; the exit code."""
    handler: Handler = args.governance
    target = Target(args.url, args.state_dir, args.admin_key, args.timeout)
    try:
        with connect(target) as client:
            outcome = handler(args, client)
    except UsageError as exc:
        print(f"inferd: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(outcome.data, indent=2) if args.json else outcome.text)
    return 0
