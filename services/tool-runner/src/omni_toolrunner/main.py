"""Entry points: ``omni-tool-runner --provider <name>`` and ``omni-tool-runner-openrouter``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from omni_runtime.service import run_service

from omni_toolrunner.adapters import KNOWN_PROVIDERS
from omni_toolrunner.app import make_body, service_name
from omni_toolrunner.providers.local import LOCAL
from omni_toolrunner.providers.openai_compatible import OPENROUTER
from omni_toolrunner.settings import ToolRunnerSettings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="omni-tool-runner",
        description="Serve one provider's tools: consume its work from NATS JetStream, publish results.",
    )
    parser.add_argument(
        "--provider",
        choices=KNOWN_PROVIDERS,
        help="provider to serve (default: OMNI_TOOLRUNNER_PROVIDER, else openrouter)",
    )
    args = parser.parse_args(argv)
    settings = ToolRunnerSettings(provider=args.provider) if args.provider else ToolRunnerSettings()
    if settings.provider not in KNOWN_PROVIDERS:
        parser.error(f"unknown provider {settings.provider!r} (known: {', '.join(KNOWN_PROVIDERS)})")
    name = service_name(settings.provider)
    run_service(name, settings, make_body(settings), description=f"Omni tools served by {settings.provider}")


def main_openrouter() -> None:
    main(["--provider", OPENROUTER.name, *sys.argv[1:]])


def main_local() -> None:
    main(["--provider", LOCAL, *sys.argv[1:]])


if __name__ == "__main__":
    main()
