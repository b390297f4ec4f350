"""Garbage in, clear errors out: schemathesis against the server's OpenAPI, and
Hypothesis against the config loader and step validation."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iii_console.core.config import load_config
from iii_console.core.discovery import discover
from iii_console.core.errors import ConfigError

from ..helpers import ROOT, make_project, start_cli


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    proj = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ROOT / "steps", proj / "steps")
    make_project(proj, {}, "server:\n  port: 0\n", redis_url=redis_server.url)
    run = start_cli(proj, "--no-ui", "--role", "server")
    yield run
    run.stop()


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server):
    import schemathesis
    from schemathesis import GenerationMode

    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert "/messages" in doc["paths"]
    schema = schemathesis.openapi.from_dict(doc)
    seen: dict[int, int] = {}
    for op_path, method in (("/messages", "POST"),):
        op = schema[op_path][method]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                resp = case.call(base_url=server.url, timeout=10)
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                assert resp.status_code < 500, (resp.status_code, resp.text, case.body)
                if resp.status_code >= 400:
                    assert "error" in resp.json()

            run()
    assert 202 in seen and any(400 <= c < 500 for c in seen)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "redis": st.dictionaries(st.sampled_from(["url", "prefix", "bogus"]), yaml_values, max_size=2),
        "server": st.dictionaries(st.sampled_from(["host", "port", "max_body_bytes", "auth_token"]), yaml_values, max_size=3),
        "queues": st.dictionaries(
            st.sampled_from(["default", "message.sent", "x"]),
            st.dictionaries(
                st.sampled_from(["max_retries", "retry_delay", "backoff", "concurrency", "dead_letter_queue", "nope"]),
                yaml_values,
                max_size=3,
            ),
            max_size=2,
        ),
        "events": yaml_values,
        "extra": yaml_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=config_like)
def test_config_loader_gives_a_config_or_a_config_error(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "iii-config.yaml"
        p.write_text(yaml.safe_dump(data))
        try:
            load_config(p, env={})
        except ConfigError as exc:
            assert str(exc).startswith(str(p))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_config_loader_survives_arbitrary_text(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "iii-config.yaml"
        p.write_text(text)
        try:
            load_config(p, env={})
        except ConfigError:
            pass


trigger_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["http", "queue", "cron", "state", "bogus"])},
    optional={
        "method": yaml_values,
        "path": yaml_values,
        "topic": yaml_values,
        "cron": yaml_values,
        "group": yaml_values,
        "key": yaml_values,
        "extra": yaml_values,
    },
)
step_like = st.fixed_dictionaries(
    {},
    optional={
        "name": yaml_values | st.text(max_size=10),
        "triggers": st.lists(trigger_like, max_size=3) | yaml_values,
        "enqueues": yaml_values,
        "flows": yaml_values,
        "colour": yaml_values,
    },
)


@settings(max_examples=150, deadline=None)
@given(cfg=step_like)
def test_step_validation_gives_a_step_or_an_error_naming_the_file(cfg):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "steps"
        root.mkdir()
        (root / "fuzz_step.py").write_text(f"config = {cfg!r}\ndef handler(input, ctx):\n    return None\n")
        found = discover(root)
        assert len(found.steps) + len(found.errors) == 1
        for err in found.errors:
            assert str(err).startswith(str((root / "fuzz_step.py").resolve()))
