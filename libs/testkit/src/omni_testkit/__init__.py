"""pytest support for Omni: real NATS and PostgreSQL servers on free ports, polling helpers,
``subscribed`` (a flush that proves the server has a connection's subscriptions), and an aiohttp
app served on a free port (``serving_app``).

The fixtures (``nats_url``, ``pg_server``, ``database_url``) come from :mod:`omni_testkit.plugin`,
which pytest loads by itself through the ``pytest11`` entry point.
"""

from omni_testkit.http import serving_app
from omni_testkit.nats import subscribed
from omni_testkit.polling import unique_name, wait_for

__all__ = ["serving_app", "subscribed", "unique_name", "wait_for"]
