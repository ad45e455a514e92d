"""Entry point of ``omni-security-service``."""

from __future__ import annotations

import asyncio
import logging

import httpx
from faststream.nats import NatsBroker
from omni_contract import kv, streams
from omni_runtime import db
from omni_runtime import nats as omni_nats
from omni_runtime.service import ServiceContext, run_service

from omni_security.app import SERVICE, SecurityApp
from omni_security.authn import Authenticator, FailureLimiter
from omni_security.bootstrap import ensure_admin
from omni_security.settings import SecuritySettings
from omni_security.tokens import JwtSettings, JwtVerifier

log = logging.getLogger(__name__)

SCHEMA = "security"


async def body(ctx: ServiceContext) -> None:
    settings = ctx.settings
    if not isinstance(settings, SecuritySettings):
        raise TypeError(f"the security-service needs SecuritySettings, got {type(settings).__name__}")
    pool = await db.create_pool(
        settings.database_url, SCHEMA, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    ctx.stack.push_async_callback(pool.close)
    async with pool.acquire() as conn:
        await db.apply_migrations(conn, SCHEMA, db.migration_files("omni_security"))

    async def db_ready() -> str | None:
        await pool.fetchval("SELECT 1")
        return None

    ctx.health.add_check("postgres", db_ready)
    await omni_nats.ensure_streams(ctx.js, (streams.AUDIT,))
    revision = await omni_nats.ensure_key_value(ctx.js, kv.SECURITY_REVISION)
    if settings.admin_key is not None:
        await ensure_admin(pool, settings.admin_key.get_secret_value())

    http = httpx.AsyncClient(timeout=5.0)
    ctx.stack.push_async_callback(http.aclose)
    jwt_settings = JwtSettings()
    verifier = JwtVerifier.from_settings(jwt_settings, http) if jwt_settings.configured else None
    limiter = FailureLimiter(
        window_s=settings.failure_window_s, slow_after=settings.slow_after, refuse_after=settings.refuse_after
    )
    inbox_prefix = settings.nats_inbox_prefix or "_INBOX"
    broker = NatsBroker(
        settings.nats_url,
        name=f"{ctx.instance} (handlers)",
        apply_types=False,
        logger=log,
        log_level=logging.DEBUG,  # a line per request at DEBUG: the gateway asks for every new caller
        graceful_timeout=settings.shutdown_grace_s,
        # FastStream opens its own connection: the same NATS identity and reply inbox as ctx.nc.
        nkeys_seed=settings.nats_nkey_seed_file,
        user_credentials=settings.nats_creds_file,
        inbox_prefix=inbox_prefix,
    )
    app = SecurityApp(
        broker,
        pool,
        ctx.js,
        revision,
        Authenticator(pool, limiter, verifier),
    )
    await broker.start()
    ctx.stack.push_async_callback(broker.stop)
    pull = await omni_nats.puller(ctx.js, streams.SECURITY_AUDIT, batch=settings.audit_batch)
    ctx.stack.push_async_callback(pull.stop)
    auditing = asyncio.create_task(app.consume_audit(pull, ctx.stopping), name="audit consumer")
    log.info("security-service ready")
    await ctx.stopping.wait()
    # The batch in hand is appended and acknowledged; what is not is delivered again later.
    done, _ = await asyncio.wait([auditing], timeout=settings.shutdown_grace_s)
    if not done:
        auditing.cancel()


def main() -> None:
    settings = SecuritySettings()
    run_service(SERVICE, settings, body, description="Omni security: who may do what, and the audit log")


if __name__ == "__main__":
    main()
