"""OpenTelemetry export, end to end: a real app and worker process exporting over OTLP/HTTP to a
receiver this module runs, which decodes the protobuf payloads as a collector would."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import events, make_project, wait_for

otlp = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra is not installed (pip install -e '.[otel]')",
)
pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install -e '.[otel]')")

pytestmark = pytest.mark.slow

STEPS = {
    "orders_step.py": """
        from iii_console import Step, http
        config = Step(name="TakeOrder", triggers=[http("POST", "/orders")], enqueues=["orders.placed"])
        def handler(req, ctx):
            ctx.enqueue("orders.placed", req.body)
            return {"status": 202, "body": {"trace_id": ctx.trace_id}}
    """,
    "boom_step.py": """
        from iii_console import Step, http
        config = Step(name="Boom", triggers=[http("POST", "/boom")])
        def handler(req, ctx):
            raise ValueError("no stock")
    """,
    "place_step.py": """
        from iii_console import Step, queue
        config = Step(name="PlaceOrder", triggers=[queue("orders.placed")], enqueues=["orders.billed"])
        async def handler(data, ctx):
            ctx.logger.info("placing", order=data["id"])
            await ctx.state.set("orders", data["id"], {"placed": True})
            await ctx.enqueue("orders.billed", data)
    """,
    "bill_step.py": """
        from iii_console import Step, queue
        config = Step(name="BillOrder", triggers=[queue("orders.billed")])
        def handler(data, ctx):
            if data.get("fail"):
                raise RuntimeError("card declined")
            ctx.state.set("bills", data["id"], {"paid": True})
    """,
}

CONFIG = """
server:
  port: 0
workers:
  shutdown_timeout: 5
telemetry:
  otlp_endpoint: {endpoint}
queues:
  orders.billed:
    max_retries: 1
    retry_delay: 50
    dead_letter_queue: orders.dlq
"""


class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with an ``ExportTraceServiceRequest``."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, Span)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = otlp.ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in req.resource_spans:
                        service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                        receiver.spans.extend((service, s) for ss in rs.scope_spans for s in ss.spans)
                out = otlp.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list[Any]:
        with self.lock:
            return [s for _svc, s in self.spans if s.trace_id.hex() == trace_id]


def attrs(kv: Any) -> dict[str, Any]:
    out = {}
    for a in kv:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    yield rec
    rec.server.shutdown()


@pytest.fixture(scope="module")
def app(receiver, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("traced")
    make_project(root, STEPS, CONFIG.format(endpoint=receiver.url), redis_url=redis_server.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_SERVICE_NAME="shop", OTEL_BSP_SCHEDULE_DELAY="50")
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    banner = proc.stderr.readline()
    m = re.search(r"on (http://\S+) with", banner)
    if m is None:
        proc.kill()
        raise AssertionError(f"iii-console did not start: {banner}{proc.stderr.read()}")
    said: list[str] = []  # what it says on stderr, for a stop that fails
    threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True).start()
    yield m.group(1)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the app did not stop within 30 s of SIGTERM; its stderr:\n{''.join(said)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    # A clean drain exits 0; a forced stop (its deadline passed) exits 1 and says where it hung.
    assert code == 0, f"the app exited {code} on SIGTERM; its stderr:\n{''.join(said)}"


def spans_of(receiver: Receiver, trace_id: str, count: int) -> dict[str, list[Any]]:
    """The trace's spans by step once ``count`` have arrived."""
    got = wait_for(
        lambda: (lambda s: s if len(s) >= count else None)(receiver.trace(trace_id)),
        timeout=20,
        what=f"{count} spans of trace {trace_id}",
    )
    by: dict[str, list[Any]] = {}
    for s in sorted(got, key=lambda s: s.start_time_unix_nano):
        by.setdefault(attrs(s.attributes)["iii.step"], []).append(s)
    return by


def test_a_request_and_the_messages_it_leads_to_are_one_trace_with_parent_links(app, receiver, rc):
    from iii_console.core.keys import Keys

    resp = httpx.post(f"{app}/orders", json={"id": "o1"})
    assert resp.status_code == 202
    trace_id = resp.json()["trace_id"]
    by = spans_of(receiver, trace_id, 3)
    [http], [place], [bill] = by["TakeOrder"], by["PlaceOrder"], by["BillOrder"]
    assert http.kind == http.SPAN_KIND_SERVER and http.name == "POST /orders" and http.parent_span_id == b""
    assert attrs(http.attributes)["http.response.status_code"] == 202
    assert place.parent_span_id == http.span_id and place.kind == place.SPAN_KIND_CONSUMER
    assert bill.parent_span_id == place.span_id
    a = attrs(place.attributes)
    assert a["iii.topic"] == "orders.placed" and a["iii.attempt"] == 1 and a["iii.trace_id"] == trace_id
    assert 0 <= a["iii.queue_wait_ms"] < 10_000
    names = [e.name for e in place.events]
    assert "state.set" in names and "enqueue" in names
    assert {"iii.group": "orders", "iii.key": "o1"}.items() <= attrs(
        next(e for e in place.events if e.name == "state.set").attributes
    ).items()
    assert bill.status.code == bill.status.STATUS_CODE_UNSET
    # The step's log line names the span it was written in (and the trace, which is the span's).
    [line] = [e for e in events(rc, Keys(), "log") if e.trace_id == trace_id and e.data.get("message") == "placing"]
    assert line.data["span_id"] == place.span_id.hex()


def test_an_incoming_traceparent_is_the_requests_parent_and_trace(app, receiver):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    resp = httpx.post(f"{app}/orders", json={"id": "o2"}, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert resp.status_code == 202 and resp.json()["trace_id"] == trace_id
    by = spans_of(receiver, trace_id, 3)
    assert by["TakeOrder"][0].parent_span_id.hex() == parent
    assert by["BillOrder"][0].parent_span_id == by["PlaceOrder"][0].span_id
    # A malformed one is ignored: a new trace starts.
    resp = httpx.post(f"{app}/orders", json={"id": "o3"}, headers={"traceparent": f"00-{'0' * 32}-{parent}-01"})
    assert resp.status_code == 202 and resp.json()["trace_id"] != "0" * 32
    assert spans_of(receiver, resp.json()["trace_id"], 3)["TakeOrder"][0].parent_span_id == b""


def test_a_failing_message_has_error_spans_with_its_retry_and_dead_letter(app, receiver):
    resp = httpx.post(f"{app}/orders", json={"id": "o4", "fail": True})
    trace_id = resp.json()["trace_id"]
    by = spans_of(receiver, trace_id, 4)
    first, second = by["BillOrder"]
    place = by["PlaceOrder"][0]
    assert first.parent_span_id == second.parent_span_id == place.span_id  # each attempt a child of the enqueuer
    assert [attrs(s.attributes)["iii.attempt"] for s in (first, second)] == [1, 2]
    for span in (first, second):
        assert span.status.code == span.status.STATUS_CODE_ERROR and "card declined" in span.status.message
        exc = next(e for e in span.events if e.name == "exception")
        assert attrs(exc.attributes)["exception.type"] == "RuntimeError"
    retry = next(e for e in first.events if e.name == "retry")
    assert attrs(retry.attributes) == {"iii.delay_ms": 50, "iii.next_attempt": 2}
    dead = next(e for e in second.events if e.name == "dead_letter")
    assert attrs(dead.attributes) == {"iii.dlq": "orders.dlq", "iii.attempts": 2}
    assert not any(e.name == "retry" for e in second.events)
    with receiver.lock:
        assert {svc for svc, s in receiver.spans if s.trace_id.hex() == trace_id} == {"shop"}


def test_a_failing_http_handler_s_span_has_error_status_and_the_exception(app, receiver):
    resp = httpx.post(f"{app}/boom", json={})
    assert resp.status_code == 500
    [span] = spans_of(receiver, resp.json()["trace_id"], 1)["Boom"]
    assert span.status.code == span.status.STATUS_CODE_ERROR and "no stock" in span.status.message
    assert attrs(span.attributes)["http.response.status_code"] == 500
    exc = next(e for e in span.events if e.name == "exception")
    assert attrs(exc.attributes)["exception.type"] == "ValueError" and "no stock" in attrs(exc.attributes)["exception.message"]


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported(tmp_path: Path):
    # redis-py imports parts of OpenTelemetry by itself when installed: only what we add counts.
    code = (
        "import sys\n"
        "import redis, redis.asyncio, dramatiq, litestar, uvicorn\n"
        "before = set(sys.modules)\n"
        "from iii_console.core.config import Config\n"
        "from iii_console.adapters.telemetry import start\n"
        "import iii_console.runtime.worker, iii_console.runtime.supervisor, iii_console.adapters.server\n"
        "assert start(Config(), 'worker0') is None\n"
        "print(sorted(m for m in set(sys.modules) - before if 'opentelemetry' in m or m.endswith('.otel')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_endpoint_without_the_extra_warns_and_runs_untraced():
    code = (
        "import sys, logging\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "sys.modules['opentelemetry'] = None\n"
        "from iii_console.core.config import Config\n"
        "from iii_console.adapters.telemetry import start\n"
        "assert start(Config(telemetry={'otlp_endpoint': 'http://127.0.0.1:9'}), 'worker0') is None\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'iii-console[otel]'" in out.stderr and "running without tracing" in out.stderr


def test_the_standard_environment_variables_win_over_the_config():
    from iii_console.adapters.telemetry import service_name, traces_url
    from iii_console.core.config import Config

    cfg = Config(telemetry={"otlp_endpoint": "http://collector:4318/", "service_name": "shop"})
    assert traces_url(cfg, {}) == "http://collector:4318/v1/traces"
    assert traces_url(cfg, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example"}) == "https://otel.example/v1/traces"
    assert traces_url(cfg, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}) == "http://t:1/x"
    assert traces_url(cfg, {"OTEL_SDK_DISABLED": "true"}) == ""
    assert traces_url(Config(), {}) == ""
    assert service_name(cfg, {}) == "shop" and service_name(cfg, {"OTEL_SERVICE_NAME": "billing"}) == "billing"
    assert service_name(Config(), {}) == "iii-console"


def test_traceparent_parsing_follows_the_w3c_rules():
    from iii_console.core.spans import parse_traceparent

    tid, pid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert parse_traceparent(f"00-{tid}-{pid}-01") == (tid, pid, "01")
    assert parse_traceparent(f"01-{tid}-{pid}-00-later") == (tid, pid, "00")  # a later version may add fields
    for bad in (
        None,
        "",
        f"00-{tid}-{pid}-01-extra",
        f"ff-{tid}-{pid}-01",
        f"00-{'0' * 32}-{pid}-01",
        f"00-{tid}-{'0' * 16}-01",
        f"00-{tid.upper()}-{pid}-01",
        f"00-{tid[:-1]}-{pid}-01",
    ):
        assert parse_traceparent(bad) is None, bad


def test_a_bad_endpoint_in_the_config_is_a_clear_error(tmp_path):
    from iii_console.core.config import load_config
    from iii_console.core.errors import ConfigError

    (tmp_path / "iii-config.yaml").write_text("telemetry:\n  otlp_endpoint: collector:4318\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "iii-config.yaml", env={})
    assert "telemetry.otlp_endpoint" in str(err.value) and "http://" in str(err.value)
