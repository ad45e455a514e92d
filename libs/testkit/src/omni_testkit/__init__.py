"""pytest support for Omni: real NATS and PostgreSQL servers on free ports, and polling helpers.

The fixtures (``nats_url``, ``pg_server``, ``database_url``) come from :mod:`omni_testkit.plugin`,
which pytest loads by itself through the ``pytest11`` entry point.
"""

from omni_testkit.polling import unique_name, wait_for

__all__ = ["unique_name", "wait_for"]
