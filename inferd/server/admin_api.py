"""The admin API on the HTTP port (`/admin/v1/...`): tenants, keys, budgets, prices, usage and audit.

Admin keys may do everything. A user key may read its own tenant's usage, budgets and keys (never another
tenant's: asking for one is a 404 like an unknown tenant); every other operation is 403. Errors have the
OpenAI shape, like the rest of the JSON API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from inferd.errors import InvalidInput, NotFound, NotReady
from inferd.gateway.admin import AdminService
from inferd.gateway.context import CallContext
from inferd.gateway.stage import Gateway
from inferd.server import status
from inferd.server.http_headers import header_dict
from inferd.server.http_v2 import read_body
from inferd.server.openai_api import openai_error
from inferd.server.openai_schema import parse_body

JSON = "application/json"
Handler = Callable[[Request, CallContext], Awaitable[Any]]


class AdminHttp:
    """Route handlers of `/admin/v1`."""

    def __init__(self, gateway: Gateway, max_body_bytes: int) -> None:
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes
        governance = gateway.governance
        self.service: AdminService | None = None
        if governance is not None:
            self.service = AdminService(
                governance.store,
                on_change=governance.reload_soon,
                budget_status=governance.budget_status,
                clock=governance.clock,
            )

    def routes(self) -> list[BaseRoute]:
        a, u = self._admin, self._tenant_scoped
        base = "/admin/v1"
        return [
            Route(f"{base}/tenants", a(self.list_tenants), methods=["GET"]),
            Route(f"{base}/tenants/{{name}}", a(self.get_tenant), methods=["GET"]),
            Route(f"{base}/tenants/{{name}}", a(self.put_tenant), methods=["PUT"]),
            Route(f"{base}/tenants/{{name}}", a(self.delete_tenant), methods=["DELETE"]),
            Route(f"{base}/keys", u(self.list_keys), methods=["GET"]),
            Route(f"{base}/keys", a(self.create_key), methods=["POST"]),
            Route(f"{base}/keys/{{key_id}}", a(self.update_key), methods=["PATCH"]),
            Route(f"{base}/keys/{{key_id}}", a(self.revoke_key), methods=["DELETE"]),
            Route(f"{base}/budgets", u(self.list_budgets), methods=["GET"]),
            Route(f"{base}/budgets", a(self.set_budget), methods=["PUT"]),
            Route(f"{base}/budgets", a(self.delete_budget), methods=["DELETE"]),
            Route(f"{base}/prices", a(self.list_prices), methods=["GET"]),
            Route(f"{base}/prices", a(self.set_price), methods=["PUT"]),
            Route(f"{base}/prices/{{model}}", a(self.delete_price), methods=["DELETE"]),
            Route(f"{base}/usage", u(self.usage), methods=["GET"]),
            Route(f"{base}/audit", a(self.audit), methods=["GET"]),
        ]

    def _wrap(self, handler: Handler, admin: bool) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            ctx = self.gateway.begin("http", header_dict(request.scope["headers"]), status.http_code_label)
            try:
                if self.service is None:
                    raise NotReady("the admin API needs authentication on (the server runs with --no-auth)")
                if admin:
                    self.gateway.require_admin(ctx)
                else:
                    self.gateway.require(ctx)
                result = await handler(request, ctx)
            except Exception as exc:
                return openai_error(exc, ctx.request_id, models=False)
            if result is None:
                return Response(status_code=204, headers={"x-request-id": ctx.request_id})
            return Response(orjson.dumps(result), media_type=JSON, headers={"x-request-id": ctx.request_id})

        return route

    def _admin(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self._wrap(handler, admin=True)

    def _tenant_scoped(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self._wrap(handler, admin=False)

    @property
    def _svc(self) -> AdminService:
        assert self.service is not None
        return self.service

    async def _body(self, request: Request) -> dict[str, Any]:
        return parse_body(await read_body(request, self.max_body_bytes))

    @staticmethod
    def _tenant_param(request: Request, ctx: CallContext) -> str | None:
        """The `tenant` query parameter; a user key is pinned to its own tenant."""
        asked = request.query_params.get("tenant") or None
        if ctx.principal.is_admin:
            return asked
        if asked is not None and asked != ctx.principal.tenant:
            raise NotFound(f"unknown tenant {asked!r}")
        return ctx.principal.tenant

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Store operations block on SQLite: off the event loop."""
        return await asyncio.to_thread(fn, *args)

    # -- handlers ------------------------------------------------------------------------------------

    async def list_tenants(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.list_tenants)

    async def get_tenant(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.get_tenant, request.path_params["name"])

    async def put_tenant(self, request: Request, ctx: CallContext) -> Any:
        body = await self._body(request)
        return await self._run(self._svc.put_tenant, ctx.principal, request.path_params["name"], body)

    async def delete_tenant(self, request: Request, ctx: CallContext) -> Any:
        await self._run(self._svc.delete_tenant, ctx.principal, request.path_params["name"])

    async def list_keys(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.list_keys, self._tenant_param(request, ctx))

    async def create_key(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.create_key, ctx.principal, await self._body(request))

    async def update_key(self, request: Request, ctx: CallContext) -> Any:
        body = await self._body(request)
        return await self._run(self._svc.update_key, ctx.principal, request.path_params["key_id"], body)

    async def revoke_key(self, request: Request, ctx: CallContext) -> Any:
        await self._run(self._svc.revoke_key, ctx.principal, request.path_params["key_id"])

    async def list_budgets(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.list_budgets, self._tenant_param(request, ctx))

    async def set_budget(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.set_budget, ctx.principal, await self._body(request))

    async def delete_budget(self, request: Request, ctx: CallContext) -> Any:
        q = request.query_params
        tenant = q.get("tenant")
        if not tenant:
            raise InvalidInput("tenant: the query parameter is required")
        scope, period = q.get("scope", "tenant"), q.get("period", "month")
        await self._run(self._svc.delete_budget, ctx.principal, tenant, scope, period)

    async def list_prices(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.list_prices)

    async def set_price(self, request: Request, ctx: CallContext) -> Any:
        return await self._run(self._svc.set_price, ctx.principal, await self._body(request))

    async def delete_price(self, request: Request, ctx: CallContext) -> Any:
        await self._run(self._svc.delete_price, ctx.principal, request.path_params["model"])

    async def usage(self, request: Request, ctx: CallContext) -> Any:
        q = request.query_params
        tenant = self._tenant_param(request, ctx)
        return await self._run(self._svc.usage, tenant, q.get("since"), q.get("by", "model"))

    async def audit(self, request: Request, ctx: CallContext) -> Any:
        q = request.query_params
        try:
            limit = int(q.get("limit", "1000"))
        except ValueError:
            raise InvalidInput(f"limit: expected an integer, got {q.get('limit')!r}") from None
        args = (q.get("tenant") or None, q.get("since"), q.get("action") or None, limit)
        return await self._run(self._svc.audit, *args)
