"""Optional OpenTelemetry export: a span per HTTP request and per message run, over OTLP/HTTP.

Off unless an endpoint is configured (``telemetry.otlp_endpoint`` or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT``) and the ``otel`` extra is installed;
until then nothing of OpenTelemetry is imported. The spans use our own trace
ids (a trace id here is 32 hex digits, as W3C's), so the trace a collector shows
is the one the console and ``tail --trace`` show.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from iii_console.core.config import Config

log = logging.getLogger(__name__)


def traces_url(config: Config, environ: Mapping[str, str] | None = None) -> str:
    """Where spans go, or ``""``: the environment's standard variables first, then the config."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or config.telemetry.otlp_endpoint
    return f"{base.rstrip('/')}/v1/traces" if base else ""


def service_name(config: Config, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("OTEL_SERVICE_NAME", "").strip() or config.telemetry.service_name or "iii-console"


def start(config: Config, role: str) -> Any:
    """A :class:`~iii_console.adapters.telemetry.otel.Tracing` for this process, or ``None``.

    With an endpoint but without the extra, one warning says what to install and
    the process runs untraced: a deployment-wide ``OTEL_*`` variable must not
    stop it.
    """
    url = traces_url(config)
    if not url:
        return None
    try:
        from iii_console.adapters.telemetry.otel import Tracing
    except ImportError as exc:
        log.warning(
            "OpenTelemetry export is configured but %s is not installed: "
            "pip install 'iii-console[otel]'; running without tracing",
            exc.name or "opentelemetry-sdk",
        )
        return None
    return Tracing(url, service_name(config), role)
