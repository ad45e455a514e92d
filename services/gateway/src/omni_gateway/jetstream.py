"""JetStream failures as API errors, for the routes that read streams and buckets directly or
publish through ``omni_runtime.publish``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors
from omni_runtime.publish import NoStream, PublishRefused, PublishUnavailable

from omni_gateway.errors import ApiError

log = logging.getLogger(__name__)

NO_MESSAGE_FOUND = 10037  # JetStream's error code for a sequence with no message


class Missing(Exception):
    """What was asked for is not in JetStream (no such stream message, bucket or key)."""


def not_found(exc: nats.js.errors.APIError) -> bool:
    return isinstance(exc, nats.js.errors.NotFoundError) or exc.err_code == NO_MESSAGE_FOUND


@contextmanager
def jetstream_errors(
    doing: str,
    unavailable: Callable[[str], ApiError],
    *,
    missing: Callable[[nats.js.errors.APIError], bool] = not_found,
) -> Iterator[None]:
    """Raise :class:`Missing` for what ``missing`` says is absent, and ``unavailable(reason)``
    (a 503) for every other JetStream or connection failure while ``doing``."""
    try:
        yield
    except nats.js.errors.APIError as exc:
        if missing(exc):
            raise Missing from None
        log.error("JetStream refused to %s: %s", doing, exc)
        raise unavailable(f"JetStream refused to {doing}: {exc.description}") from None
    except nats.errors.TimeoutError:
        raise unavailable(f"JetStream did not answer in time to {doing}") from None
    except nats.errors.Error as exc:
        raise unavailable(f"NATS connection: {exc}") from None


@contextmanager
def publish_errors(
    what: str, unavailable: Callable[[str], ApiError], *, no_stream: Callable[[], ApiError]
) -> Iterator[None]:
    """Raise ``no_stream()`` when no stream takes the subject, and ``unavailable(reason)`` when
    JetStream refuses the publish (logged as an error: it should not happen) or does not answer."""
    try:
        yield
    except NoStream:
        raise no_stream() from None
    except PublishRefused as exc:
        log.error("%s was not stored: %s", what, exc.reason)
        raise unavailable(exc.reason) from None
    except PublishUnavailable as exc:
        raise unavailable(exc.reason) from None
