"""`inferd serve`, `inferd bench`, and the governance commands (`inferd tenants|keys|budgets|...`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from inferd.cli.governance import add_governance_commands, run_governance
from inferd.config import ServerConfig, load_server_config
from inferd.configfile import ConfigError


def _serve_args(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    p.add_argument("--model-repository", help="folder with one sub-folder per model")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port, 0 = any free port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 = any free port (default 8001)")
    p.add_argument("--state-dir", help="state folder (default .inferd)")
    p.add_argument("--model-control", choices=["none", "explicit", "poll"])
    p.add_argument(
        "--load-model", action="append", default=None, help="model to load at start (explicit mode)"
    )
    p.add_argument("--config", type=Path, help="inferd.yaml")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="no API keys, limits, budgets or usage ledger (local work only)",
    )


def build_config(args: argparse.Namespace) -> ServerConfig:
    config = load_server_config(args.config)
    overrides = {
        "model_repository": args.model_repository,
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "state_dir": args.state_dir,
        "model_control": args.model_control,
        "load_models": args.load_model,
        "log_level": args.log_level,
        "auth": False if args.no_auth else None,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    return config


def serve(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"inferd: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not Path(config.model_repository).is_dir():
        print(f"inferd: model repository {config.model_repository} is not a folder", file=sys.stderr)
        return 2
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    from inferd.engine.compute_thread import set_openmp_defaults

    set_openmp_defaults()  # before anything loads torch
    _report_native()
    from inferd.errors import JournalLocked
    from inferd.server.app import InferdServer

    try:
        asyncio.run(InferdServer(config).serve_forever())
    except JournalLocked as exc:
        print(f"inferd: {exc}", file=sys.stderr)
        return 2
    return 0


def _report_native() -> None:
    from inferd import native

    log = logging.getLogger("inferd.native")
    if stale := native.stale():
        log.warning("compiled modules older than their sources run old code: %s (run `make native`)", stale)
    done = native.compiled()
    log.info("request-path modules compiled: %d of %d", len(done), len(native.MODULES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferd", description="inferd inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub)
    bench = sub.add_parser("bench", help="load generators")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    v2 = bench_sub.add_parser("v2", help="load a V2 (KServe/Triton) endpoint")
    from inferd.loadgen.v2 import add_v2_arguments, main_v2

    add_v2_arguments(v2)
    openai = bench_sub.add_parser(
        "openai", help="load an OpenAI-compatible LLM endpoint (streaming completions)"
    )
    from inferd.loadgen.openai import add_openai_arguments, main_openai

    add_openai_arguments(openai)
    add_governance_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "governance", None) is not None:
        return run_governance(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "bench" and args.bench_command == "v2":
        return main_v2(args)
    if args.command == "bench" and args.bench_command == "openai":
        return main_openai(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
