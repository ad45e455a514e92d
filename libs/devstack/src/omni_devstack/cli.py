"""The ``omni`` command.

``omni run`` starts the whole system on this machine and stops it on Ctrl-C or SIGTERM.
Settings (environment):

- ``OMNI_HOME``: data directory (default ``.omni``); runs survive a restart.
- ``OMNI_HTTP_PORT``: the gateway's port (default 8080).
- ``OMNI_NATS_PORT`` / ``OMNI_PG_PORT``: ports of the embedded servers (default 14222 / 15432).
- ``NATS_URL`` / ``DATABASE_URL``: use these servers instead of starting embedded ones.
- ``OPENROUTER_API_KEY``: call OpenRouter; without it, providers are simulated (and it says so).
- ``OMNI_LOG_FORMAT``: ``console`` (``HH:MM:SS service LEVEL message run=<id>``) or ``json``; by
  default console when stderr is a terminal, JSON otherwise.

The embedded NATS and PostgreSQL are restarted (with back-off) when one dies; a service that exits
stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from omni_runtime.logging import setup_logging

from omni_devstack.servers import ServerStartError
from omni_devstack.supervisor import Stack, StackConfig

log = logging.getLogger("omni")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"omni: {name} must be a port number, got {raw!r}") from None


def run(args: argparse.Namespace) -> int:
    config = StackConfig(
        home=Path(os.environ.get("OMNI_HOME", ".omni")),
        http_port=_int_env("OMNI_HTTP_PORT", 8080),
        nats_url=os.environ.get("NATS_URL") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
        nats_port=_int_env("OMNI_NATS_PORT", 14222),
        pg_port=_int_env("OMNI_PG_PORT", 15432),
        workflows_dir=Path(args.workflows),
        integrations_dir=Path(args.integrations),
        engine_replicas=args.engine_replicas,
        runner_replicas=args.runner_replicas,
    )
    stack = Stack(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except ServerStartError as exc:
        sys.stderr.write(f"omni: {exc}\n")
        return 1
    sys.stderr.write("\n" + stack.describe() + "\nPress Ctrl-C to stop.\n\n")
    exit_code = 0
    while not stop.wait(0.5):
        dead = [p.name for p in stack.processes.values() if not p.running()]
        if dead:
            sys.stderr.write(f"omni: {', '.join(dead)} exited; stopping everything\n")
            exit_code = 1
            break
    sys.stderr.write("omni: stopping\n")
    stack.stop()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    setup_logging("omni")  # a person's terminal: the services' short lines; else JSON, like theirs
    parser = argparse.ArgumentParser(prog="omni", description="Omni: orchestrate AI capabilities")
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="start the whole system on this machine")
    run_cmd.add_argument("--workflows", default="workflows", help="directory of workflow files")
    run_cmd.add_argument(
        "--integrations", default="integrations", help="directory of declared tool files (HTTP integrations)"
    )
    run_cmd.add_argument("--engine-replicas", type=int, default=1)
    run_cmd.add_argument("--runner-replicas", type=int, default=1)
    run_cmd.set_defaults(func=run)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
