"""Run the monitor's own SQL without being traced by other instrumentations.

A SQLAlchemy or DB-API instrumentation in the same process would otherwise
make a span of every refresh query.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context

__all__ = ["suppress_instrumentation"]

# The API's own key; opentelemetry-instrumentation's helper sets the same.
_KEY = getattr(
    context,
    "_SUPPRESS_INSTRUMENTATION_KEY",
    context.create_key("suppress_instrumentation"),
)


@contextmanager
def suppress_instrumentation() -> Iterator[None]:
    """Mark the current context so instrumentations skip what runs in it."""
    token = context.attach(context.set_value(_KEY, True))
    try:
        yield
    finally:
        context.detach(token)
