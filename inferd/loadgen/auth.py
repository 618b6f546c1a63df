"""The API key both load generators send (`--api-key`, default `$INFERD_API_KEY`)."""

from __future__ import annotations

import argparse
import os

ENV = "INFERD_API_KEY"


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=os.environ.get(ENV) or None,
        help=f"API key sent as 'Authorization: Bearer' (default ${ENV})",
    )


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}
