"""The step model and discovery: typed helpers and dicts validate alike; broken files become StepErrors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from iii_console import Step, cron, http, queue, state
from iii_console.core.discovery import discover
from iii_console.core.steps import CronTrigger, HttpTrigger, QueueTrigger, StateTrigger


class Body(BaseModel):
    text: str


def first_error(exc: ValidationError) -> tuple[tuple, str]:
    err = exc.errors()[0]
    return tuple(err["loc"]), err["msg"]


# --- the model -------------------------------------------------------------------------------


def test_typed_helpers_and_motia_dict_build_the_same_step():
    """Given one step written with typed helpers and as a Motia dict, when validated, then both are equal."""
    typed = Step(
        name="Multi",
        triggers=[http("post", "/items/:id", body=Body), queue("items.new", input=Body), cron("*/5 * * * *"), state("items", "a*")],
        enqueues=["items.done"],
        flows=["items"],
    )
    motia = Step.model_validate({
        "name": "Multi",
        "triggers": [
            {"type": "http", "method": "post", "path": "/items/:id", "bodySchema": Body},
            {"type": "queue", "topic": "items.new", "input": Body},
            {"type": "cron", "cron": "*/5 * * * *"},
            {"type": "state", "group": "items", "key": "a*"},
        ],
        "enqueues": ["items.done"],
        "flows": ["items"],
    })
    assert typed == motia
    assert [type(t) for t in typed.triggers] == [HttpTrigger, QueueTrigger, CronTrigger, StateTrigger]
    assert typed.topics == ["items.new"]


@pytest.mark.parametrize("path,normalised,params", [
    ("/users/:id", "/users/{id}", ["id"]),
    ("/users/:user_id/posts/:postId", "/users/{user_id}/posts/{postId}", ["user_id", "postId"]),
    ("/users/{id}", "/users/{id}", ["id"]),
    ("/health", "/health", []),
])
def test_colon_params_are_normalised_to_braces(path, normalised, params):
    """Given a Motia-style :param path, when building an http trigger, then it becomes {param} and is listed as a path param."""
    t = http("GET", path)
    assert t.path == normalised
    assert t.path_params == params


def test_method_is_upper_cased():
    """Given a lower-case method, when building an http trigger, then the method is stored upper-case."""
    assert http("patch", "/x").method == "PATCH"


@pytest.mark.parametrize("build,field,words", [
    (lambda: http("FETCH", "/x"), "method", "must be one of GET, POST"),
    (lambda: http("GET", "x"), "path", "must start with '/'"),
    (lambda: http("GET", "/a b"), "path", "may contain only"),
    (lambda: cron("* * *"), "expression", "has 3 fields"),
    (lambda: cron("61 * * * *"), "expression", "cron field minute"),
    (lambda: queue("bad topic"), "topic", "pattern"),
    (lambda: state("bad group"), "group", "pattern"),
    (lambda: http("GET", "/x", body=dict), "body_schema", "pydantic model class"),
])
def test_typed_helper_mistakes_name_the_field(build, field, words):
    """Given a bad argument to a typed helper, when it is called, then the validation error names the field and says why."""
    with pytest.raises(ValidationError) as info:
        build()
    loc, msg = first_error(info.value)
    assert loc[-1] == field
    assert words in msg


@pytest.mark.parametrize("raw,loc,words", [
    ({"name": "S", "triggers": [{"type": "http", "method": "FETCH", "path": "/x"}]}, ("triggers", 0, "http", "method"), "must be one of"),
    ({"name": "S", "triggers": [{"type": "http", "path": "nope"}]}, ("triggers", 0, "http", "path"), "must start with '/'"),
    ({"name": "S", "triggers": [{"type": "cron", "cron": "* * * * 9"}]}, ("triggers", 0, "cron", "cron"), "day_of_week"),
    ({"name": "S", "triggers": [{"type": "queue", "topic": "t", "bogus": 1}]}, ("triggers", 0, "queue", "bogus"), "Extra inputs"),
    ({"name": "S", "triggers": [{"type": "queue", "topic": "t"}], "colour": "red"}, ("colour",), "Extra inputs"),
    ({"triggers": [{"type": "queue", "topic": "t"}]}, ("name",), "Field required"),
    ({"name": "S", "triggers": []}, ("triggers",), "at least 1"),
    ({"name": "S", "triggers": [{"type": "queue", "topic": "t"}], "enqueues": ["a b"]}, ("enqueues",), "not a valid topic"),
    ({"name": "S", "triggers": [{"type": "http", "path": "/a"}, {"type": "http", "method": "post", "path": "/a"}]}, (), "duplicate http trigger POST /a"),
])
def test_motia_dict_mistakes_name_the_field(raw, loc, words):
    """Given a Motia dict with one mistake, when validated, then the error's location is the field and the message says why."""
    with pytest.raises(ValidationError) as info:
        Step.model_validate(raw)
    got_loc, msg = first_error(info.value)
    assert got_loc == loc
    assert words in msg


def test_state_trigger_matches_group_and_key_glob():
    """Given a state trigger on group "orders" key "eu-*", when asked about changes, then only that group and matching keys match."""
    t = state("orders", "eu-*")
    assert t.matches("orders", "eu-1")
    assert not t.matches("orders", "us-1")
    assert not t.matches("orders-archive", "eu-1")


# --- discovery -------------------------------------------------------------------------------

FILES = {
    # Sorted first, so it owns the name "Good" and the route GET /things/{id}.
    "a_good_step.py": """
        from iii_console import Step, http, queue

        config = Step(name="Good", triggers=[http("GET", "/things/:id"), queue("things.made")])


        async def handler(input, ctx):
            return None
        """,
    "b_motia_step.py": """
        config = {
            "name": "Motia",
            "triggers": [{"type": "queue", "topic": "things.made"}],
            "enqueues": ["things.done"],
        }


        def handler(input, ctx):
            return None
        """,
    "c_syntax_step.py": """
        from iii_console import Step

        config = {
            "name": "Broken",
            "triggers": [
        }
        """,
    "d_raises_step.py": """
        from iii_console import Step, queue

        value = 1
        raise RuntimeError("boom at import")
        """,
    "e_invalid_step.py": """
        config = {"name": "BadMethod", "triggers": [{"type": "http", "method": "FETCH", "path": "/x"}]}


        def handler(input, ctx):
            return None
        """,
    "f_nohandler_step.py": """
        from iii_console import Step, queue

        config = Step(name="NoHandler", triggers=[queue("a")])
        """,
    "g_dupname_step.py": """
        from iii_console import Step, queue

        config = Step(name="Good", triggers=[queue("other")])


        def handler(input, ctx):
            return None
        """,
    "nested/deeper/route_step.py": """
        from iii_console import Step, http

        config = Step(name="SameRoute", triggers=[http("GET", "/things/{id}")])


        def handler(input, ctx):
            return None
        """,
    "nested/tick_step.py": """
        from iii_console import Step, cron

        config = Step(name="Tick", triggers=[cron("0 9 * * 1-5")])


        def handler(ctx):
            return None
        """,
    # Not matching *_step.py: must never be imported (each would be an error if it were).
    "nested/helpers.py": 'raise RuntimeError("helpers must not be imported")\n',
    "step_notes.py": 'raise RuntimeError("not a step file")\n',
    "readme_step.txt": "not python\n",
    ".hidden/secret_step.py": 'raise RuntimeError("hidden folders are skipped")\n',
}


def make_steps(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


@pytest.fixture
def found(tmp_path):
    root = make_steps(tmp_path / "steps", FILES)
    return root, discover(root)


def error_for(found, rel: str):
    root, result = found
    errs = [e for e in result.errors if e.file == str((root / rel).resolve())]
    assert len(errs) == 1, [str(e) for e in result.errors]
    return errs[0]


def test_good_steps_load_alongside_broken_ones(found):
    """Given a steps dir with good and broken files, when discovered, then exactly the good steps load, with handler and file."""
    root, result = found
    assert sorted(s.name for s in result.steps) == ["Good", "Motia", "Tick"]
    good = result.by_name("Good")
    assert good.file == str(root.resolve() / "a_good_step.py")
    assert callable(good.handler)
    assert result.by_name("Tick").file == str(root.resolve() / "nested" / "tick_step.py")


def test_each_broken_file_yields_exactly_one_error(found):
    """Given six broken step files, when discovered, then there are six errors, one per broken file."""
    root, result = found
    broken = {"c_syntax_step.py", "d_raises_step.py", "e_invalid_step.py", "f_nohandler_step.py", "g_dupname_step.py", "nested/deeper/route_step.py"}
    assert sorted(e.file for e in result.errors) == sorted(str(root.resolve() / b) for b in broken)


def test_syntax_error_names_file_and_line(found):
    """Given a file with an unclosed bracket, when discovered, then its error names the file, line 6 and says syntax error."""
    err = error_for(found, "c_syntax_step.py")
    assert err.line == 6
    assert str(err).startswith(f"{err.file}:6: syntax error")


def test_import_error_names_file_line_and_exception(found):
    """Given a file raising at import on line 4, when discovered, then its error names the file, line 4 and the exception."""
    err = error_for(found, "d_raises_step.py")
    assert err.line == 4
    assert str(err) == f"{err.file}:4: import failed: RuntimeError: boom at import"


def test_invalid_config_dict_names_file_step_and_field(found):
    """Given a dict config with a bad method, when discovered, then its error names the file, the step and triggers.0.method."""
    err = error_for(found, "e_invalid_step.py")
    assert (err.step, err.field) == ("BadMethod", "triggers.0.method")
    assert str(err) == f"{err.file}, step 'BadMethod', field 'triggers.0.method': must be one of GET, POST, PUT, PATCH, DELETE"


def test_missing_handler_names_file_step_and_field(found):
    """Given a file with config but no handler, when discovered, then its error names the step and the handler field."""
    err = error_for(found, "f_nohandler_step.py")
    assert (err.step, err.field) == ("NoHandler", "handler")
    assert err.file in str(err) and "'NoHandler'" in str(err) and "handler" in str(err)


def test_duplicate_step_name_names_both_files(found):
    """Given two files declaring step "Good", when discovered, then the later file's error names the step and the first file."""
    root, _ = found
    err = error_for(found, "g_dupname_step.py")
    assert (err.step, err.field) == ("Good", "name")
    assert "duplicate step name" in str(err)
    assert str(root.resolve() / "a_good_step.py") in str(err)


def test_duplicate_route_names_the_step_already_serving_it(found):
    """Given GET /things/:id and GET /things/{id} in two steps, when discovered, then the second is rejected naming the first."""
    err = error_for(found, "nested/deeper/route_step.py")
    assert (err.step, err.field) == ("SameRoute", "triggers")
    assert "route GET /things/{id} is already served by step 'Good'" in str(err)


def test_nested_step_files_are_found_and_others_ignored(found):
    """Given *_step.py files in nested folders and other files that raise on import, when discovered, then only *_step.py outside hidden folders are loaded."""
    root, result = found
    loaded_or_failed = {s.file for s in result.steps} | {e.file for e in result.errors}
    assert str(root.resolve() / "nested" / "tick_step.py") in loaded_or_failed
    for ignored in ("nested/helpers.py", "step_notes.py", "readme_step.txt", ".hidden/secret_step.py"):
        assert str(root.resolve() / ignored) not in loaded_or_failed
    assert all("must not be imported" not in str(e) and "not a step file" not in str(e) for e in result.errors)


def test_step_set_indexes_by_trigger_kind_and_topic(found):
    """Given the discovered steps, when asking by trigger kind or topic, then the right steps come back."""
    _, result = found
    assert [s.name for s in result.http_steps()] == ["Good"]
    assert [s.name for s in result.cron_steps()] == ["Tick"]
    assert sorted(s.name for s in result.subscribers("things.made")) == ["Good", "Motia"]
    assert result.topics == ["things.made"]


def test_missing_steps_dir_is_one_error(tmp_path):
    """Given a steps dir that does not exist, when discovered, then there are no steps and one error naming the dir."""
    result = discover(tmp_path / "nowhere")
    assert result.steps == []
    assert [e.file for e in result.errors] == [str((tmp_path / "nowhere").resolve())]


@pytest.mark.parametrize("body,field", [
    ('config = Step(name="T", triggers=[http("FETCH", "/x")])', "method"),
    ('config = Step(name="T", triggers=[queue("t")], colour="red")', "colour"),
])
def test_typed_helper_mistake_in_a_file_names_file_line_and_field(tmp_path, body, field):
    """Given a step file whose typed config is invalid, when discovered, then its error names the file, the line and the field."""
    text = f"from iii_console import Step, http, queue\n\n{body}\n\n\ndef handler(input, ctx):\n    return None\n"
    root = make_steps(tmp_path / "steps", {"typed_step.py": text})
    (err,) = discover(root).errors
    assert err.line == 3
    assert err.field == field
    assert str(err).startswith(f"{root.resolve() / 'typed_step.py'}:3, step 'T', field {field!r}: ")


def test_typed_helper_mistake_in_a_file_names_the_step(tmp_path):
    """Given Step(name="T", triggers=[http("FETCH", ...)]) in a file, when discovered, then the error names step 'T' like a dict config would."""
    text = 'from iii_console import Step, http\n\nconfig = Step(name="T", triggers=[http("FETCH", "/x")])\n\n\ndef handler(input, ctx):\n    return None\n'
    root = make_steps(tmp_path / "steps", {"typed_step.py": text})
    (err,) = discover(root).errors
    assert err.step == "T"


def test_cron_only_handler_must_take_ctx_or_input_and_ctx(tmp_path):
    """Given a cron step whose handler takes three arguments, when discovered, then its error names the handler field."""
    text = 'from iii_console import Step, cron\n\nconfig = Step(name="C", triggers=[cron("* * * * *")])\n\n\ndef handler(a, b, c):\n    return None\n'
    root = make_steps(tmp_path / "steps", {"c_step.py": text})
    (err,) = discover(root).errors
    assert (err.step, err.field) == ("C", "handler")


def test_reserved_topic_prefix_is_rejected(tmp_path):
    """Given a queue trigger on a topic starting with '_', when discovered, then the step is rejected naming the topic."""
    text = 'from iii_console import Step, queue\n\nconfig = Step(name="R", triggers=[queue("_internal")])\n\n\ndef handler(i, ctx):\n    return None\n'
    root = make_steps(tmp_path / "steps", {"r_step.py": text})
    result = discover(root)
    assert result.steps == []
    (err,) = result.errors
    assert (err.step, err.field) == ("R", "triggers")
    assert "'_internal'" in str(err)
