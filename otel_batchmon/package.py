"""What the instrumentor needs installed, in the contrib packages' shape.

``opentelemetry-instrument`` compares this with the installed packages
(through the ``instruments`` extra) before it loads the instrumentor.
"""

from __future__ import annotations

__all__ = ["_instruments", "_supports_metrics"]

_instruments = ("sqlalchemy >= 2.0",)
_supports_metrics = True
