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
        triggers=[
            http("post", "/items/:id", body=Body),
            queue("items.new", input=Body),
            cron("*/5 * * * *"),
            state("items", "a*"),
        ],
        enqueues=["items.done"],
        flows=["items"],
    )
    motia = Step.model_validate(
        {
            "name": "Multi",
            "triggers": [
                {"type": "http", "method": "post", "path": "/items/:id", "bodySchema": Body},
                {"type": "queue", "topic": "items.new", "input": Body},
                {"type": "cron", "cron": "*/5 * * * *"},
                {"type": "state", "group": "items", "key": "a*"},
            ],
            "enqueues": ["items.done"],
            "flows": ["items"],
        }
    )
    assert typed == motia
    assert [type(t) for t in typed.triggers] == [HttpTrigger, QueueTrigger, CronTrigger, StateTrigger]
    assert typed.topics == ["items.new"]


@pytest.mark.parametrize(
    "path,normalised,params",
    [
        ("/users/:id", "/users/{id}", ["id"]),
        ("/users/:user_id/posts/:postId", "/users/{user_id}/posts/{postId}", ["user_id", "postId"]),
        ("/users/{id}", "/users/{id}", ["id"]),
        ("/health", "/health", []),
        ("/health/", "/health", []),
        ("/", "/", []),
        ("/files/v1.2/~me", "/files/v1.2/~me", []),
    ],
)
def test_colon_params_are_normalised_to_braces(path, normalised, params):
    """Given a Motia-style :param path, when building an http trigger, then it becomes {param} and is listed as a path param."""
    t = http("GET", path)
    assert t.path == normalised
    assert t.path_params == params


def test_method_is_upper_cased():
    """Given a lower-case method, when building an http trigger, then the method is stored upper-case."""
    assert http("patch", "/x").method == "PATCH"


@pytest.mark.parametrize(
    "build,field,words",
    [
        (lambda: http("FETCH", "/x"), "method", "must be one of GET, POST"),
        (lambda: http("GET", "x"), "path", "must start with '/'"),
        (lambda: http("GET", "/a b"), "path", "may contain only"),
        (lambda: http("GET", "/x/{id"), "path", "a parameter is a whole segment"),
        (lambda: http("GET", "/x/a{id}"), "path", "a parameter is a whole segment"),
        (lambda: http("GET", "/x/{id}/{id}"), "path", "appears twice"),
        (lambda: http("GET", "/x//y"), "path", "empty segment"),
        (lambda: http("GET", "/x", responses={99: None}), "response_schema", "not an HTTP status code"),
        (lambda: http("POST", "/x", body={"type": "objekt"}), "body_schema", "not a valid JSON schema at type"),
        (lambda: cron("* * *"), "expression", "has 3 fields"),
        (lambda: cron("61 * * * *"), "expression", "cron field minute"),
        (lambda: queue("bad topic"), "topic", "pattern"),
        (lambda: state("bad group"), "group", "pattern"),
        (lambda: http("GET", "/x", body=dict), "body_schema", "pydantic model class or a JSON-schema dict"),
    ],
)
def test_typed_helper_mistakes_name_the_field(build, field, words):
    """Given a bad argument to a typed helper, when it is called, then the validation error names the field and says why."""
    with pytest.raises(ValidationError) as info:
        build()
    loc, msg = first_error(info.value)
    assert loc[-1] == field
    assert words in msg


@pytest.mark.parametrize(
    "raw,loc,words",
    [
        (
            {"name": "S", "triggers": [{"type": "http", "method": "FETCH", "path": "/x"}]},
            ("triggers", 0, "http", "method"),
            "must be one of",
        ),
        ({"name": "S", "triggers": [{"type": "http", "path": "nope"}]}, ("triggers", 0, "http", "path"), "must start with '/'"),
        ({"name": "S", "triggers": [{"type": "cron", "cron": "* * * * 9"}]}, ("triggers", 0, "cron", "cron"), "day_of_week"),
        (
            {"name": "S", "triggers": [{"type": "queue", "topic": "t", "bogus": 1}]},
            ("triggers", 0, "queue", "bogus"),
            "Extra inputs",
        ),
        ({"name": "S", "triggers": [{"type": "queue", "topic": "t"}], "colour": "red"}, ("colour",), "Extra inputs"),
        ({"triggers": [{"type": "queue", "topic": "t"}]}, ("name",), "Field required"),
        ({"name": "Send--Mail", "triggers": [{"type": "queue", "topic": "t"}]}, ("name",), "may not contain '--'"),
        ({"name": "S", "triggers": []}, ("triggers",), "at least 1"),
        ({"name": "S", "triggers": [{"type": "queue", "topic": "t"}], "enqueues": ["a b"]}, ("enqueues",), "not a valid topic"),
        (
            {"name": "S", "triggers": [{"type": "http", "path": "/a"}, {"type": "http", "method": "post", "path": "/a"}]},
            (),
            "duplicate http trigger POST /a",
        ),
    ],
)
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

        config = Step(name="SameRoute", triggers=[http("GET", "/things/{key}")])


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
    broken = {
        "c_syntax_step.py",
        "d_raises_step.py",
        "e_invalid_step.py",
        "f_nohandler_step.py",
        "g_dupname_step.py",
        "nested/deeper/route_step.py",
    }
    assert sorted(e.file for e in result.errors) == sorted(str(root.resolve() / b) for b in broken)


def test_syntax_error_names_file_line_and_declared_step(found):
    """Given a file with an unclosed bracket, when discovered, then its error names the file, line 6, the step
    name the source declares, and says syntax error."""
    err = error_for(found, "c_syntax_step.py")
    assert (err.line, err.step) == (6, "Broken")
    assert str(err).startswith(f"{err.file}:6, step 'Broken': syntax error")


def test_import_error_names_file_line_and_exception(found):
    """Given a file raising at import on line 4, when discovered, then its error names the file, line 4 and the exception."""
    err = error_for(found, "d_raises_step.py")
    assert err.line == 4
    assert str(err) == f"{err.file}:4: import failed: RuntimeError: boom at import"


def test_invalid_config_dict_names_file_step_and_field(found):
    """Given a dict config with a bad method, when discovered, then its error names the file, the step and triggers.0.method."""
    err = error_for(found, "e_invalid_step.py")
    assert (err.step, err.field, err.line) == ("BadMethod", "triggers.0.method", 1)
    assert str(err) == f"{err.file}:1, step 'BadMethod', field 'triggers.0.method': must be one of GET, POST, PUT, PATCH, DELETE"


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
    """Given GET /things/:id and GET /things/{key} in two steps, when discovered, then the second is rejected
    naming the first: the parameter's name does not make it another route."""
    err = error_for(found, "nested/deeper/route_step.py")
    assert (err.step, err.field, err.line) == ("SameRoute", "triggers.0", 3)
    assert "route GET /things/{key} is already served by step 'Good'" in str(err)
    root, _ = found
    assert f"({root.resolve() / 'a_good_step.py'}, loaded first" in str(err)


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


@pytest.mark.parametrize(
    "body,field",
    [
        ('config = Step(name="T", triggers=[http("FETCH", "/x")])', "method"),
        ('config = Step(name="T", triggers=[queue("t")], colour="red")', "colour"),
    ],
)
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
    assert (err.step, err.field, err.line) == ("C", "handler", 6)


def test_reserved_topic_prefix_is_rejected(tmp_path):
    """Given a queue trigger on a topic starting with '_', when discovered, then the step is rejected naming the topic."""
    text = 'from iii_console import Step, queue\n\nconfig = Step(name="R", triggers=[queue("_internal")])\n\n\ndef handler(i, ctx):\n    return None\n'
    root = make_steps(tmp_path / "steps", {"r_step.py": text})
    result = discover(root)
    assert result.steps == []
    (err,) = result.errors
    assert (err.step, err.field) == ("R", "triggers.0.topic")
    assert "'_internal'" in str(err)


# --- every kind of broken step file -----------------------------------------------------------

GOOD = 'from iii_console import Step, queue\nconfig = Step(name="StillHere", triggers=[queue("ok")])\ndef handler(data, ctx):\n    return None\n'

#: id -> (source, line, step, field, words in the message). Lines are 1-based and exact.
BROKEN = {
    "syntax error": (
        'config = {"name": "Syn", "triggers": [\n\ndef handler(x, ctx):\n    pass\n',
        1,
        "Syn",
        None,
        "syntax error: '[' was never closed",
    ),
    "import error": (
        'import no_such_module_here\nconfig = {"name": "Imp", "triggers": [{"type": "queue", "topic": "t"}]}\n',
        1,
        "Imp",
        None,
        "import failed: ModuleNotFoundError: No module named 'no_such_module_here'",
    ),
    "raises at import": (
        'x = 1\n\nraise ValueError("bad at import")\n',
        3,
        None,
        None,
        "import failed: ValueError: bad at import",
    ),
    "no config": ("def handler(x, ctx):\n    pass\n", None, None, "config", "no `config` defined"),
    "config not a dict": (
        'config = "hello"\ndef handler(x, ctx):\n    pass\n',
        1,
        None,
        "config",
        "must be a Step or a dict, not str",
    ),
    "no handler": (
        'config = {"name": "NoHandler", "triggers": [{"type": "queue", "topic": "t"}]}\n',
        None,
        "NoHandler",
        "handler",
        "no `handler` defined",
    ),
    "handler not callable": (
        'config = {"name": "NotCallable", "triggers": [{"type": "queue", "topic": "t"}]}\nhandler = 42\n',
        2,
        "NotCallable",
        "handler",
        "`handler` must be a function, not int",
    ),
    "misspelt key": (
        'config = {\n    "name": "Typo",\n    "trigers": [{"type": "queue", "topic": "t"}],\n}\ndef handler(x, ctx):\n    pass\n',
        3,
        "Typo",
        "trigers",
        "unknown field 'trigers'; did you mean 'triggers'?",
    ),
    "misspelt trigger key": (
        'config = {\n    "name": "Typo2",\n    "triggers": [\n        {"type": "queue", "topic": "a"},\n'
        '        {"type": "queue",\n         "topc": "b"},\n    ],\n}\ndef handler(x, ctx):\n    pass\n',
        6,
        "Typo2",
        "triggers.1.topc",
        "unknown field 'topc'; did you mean 'topic'?",
    ),
    "wrong trigger type": (
        'config = {"name": "Hook", "triggers": [{"type": "webhook", "topic": "t"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "Hook",
        "triggers.0.type",
        "'webhook' is not a trigger type; use http, queue, cron or state",
    ),
    "trigger without type": (
        'config = {"name": "NoType", "triggers": [{"topic": "t"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "NoType",
        "triggers.0.type",
        "missing; use http, queue, cron or state",
    ),
    "bad http method": (
        'config = {"name": "Fetch", "triggers": [\n    {"type": "http", "method": "FETCH", "path": "/x"}]}\n'
        "def handler(x, ctx):\n    pass\n",
        2,
        "Fetch",
        "triggers.0.method",
        "must be one of GET, POST",
    ),
    "unbalanced path param": (
        'config = {"name": "Brace", "triggers": [{"type": "http", "path": "/x/{id"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "Brace",
        "triggers.0.path",
        "segment '{id': a parameter is a whole segment",
    ),
    "path with a space (typed)": (
        'from iii_console import Step, http, queue\n\nconfig = Step(\n    name="Space",\n    triggers=[\n'
        '        queue("ok2"),\n        http("GET", "/a b"),\n    ],\n)\ndef handler(x, ctx):\n    pass\n',
        7,
        "Space",
        "path",
        "segment 'a b' may contain only",
    ),
    "cron, 6 fields": (
        'config = {"name": "Six", "triggers": [{"type": "cron", "cron": "99 * * * * *"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "Six",
        "triggers.0.cron",
        "cron field second '99'",
    ),
    "cron, 5 fields (typed)": (
        'from iii_console import Step, cron\nconfig = Step(name="Five", triggers=[cron("* 25 * * *")])\n'
        "def handler(x, ctx):\n    pass\n",
        2,
        "Five",
        "expression",
        "cron field hour '25'",
    ),
    "cron, 3 fields": (
        'config = {"name": "Three", "triggers": [{"type": "cron", "cron": "* * *"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "Three",
        "triggers.0.cron",
        "has 3 fields",
    ),
    "state without group": (
        'config = {"name": "NoGroup", "triggers": [{"type": "state", "key": "*"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "NoGroup",
        "triggers.0.group",
        "needs a group, or a condition to pick its changes from every group",
    ),
    "queue without topic": (
        'config = {"name": "NoTopic", "triggers": [{"type": "queue"}]}\ndef handler(x, ctx):\n    pass\n',
        1,
        "NoTopic",
        "triggers.0.topic",
        "Field required",
    ),
    "handler with three arguments": (
        'config = {"name": "Three", "triggers": [{"type": "queue", "topic": "t"}]}\n\n\ndef handler(a, b, c):\n    pass\n',
        4,
        "Three",
        "handler",
        "handler must take (input, ctx) or (ctx)",
    ),
    "handler with none": (
        'config = {"name": "Zero", "triggers": [{"type": "queue", "topic": "t"}]}\nasync def handler():\n    pass\n',
        2,
        "Zero",
        "handler",
        "handler must take (input, ctx) or (ctx)",
    ),
    "keyword-only ctx": (
        'config = {"name": "Kw", "triggers": [{"type": "queue", "topic": "t"}]}\ndef handler(data, *, ctx):\n    pass\n',
        2,
        "Kw",
        "handler",
        "handler must take (input, ctx) or (ctx)",
    ),
    "invalid JSON schema": (
        'config = {"name": "Js", "triggers": [{"type": "http", "path": "/js", "bodySchema": {"type": "objekt"}}]}\n'
        "def handler(x, ctx):\n    pass\n",
        1,
        "Js",
        "triggers.0.bodySchema",
        "not a valid JSON schema at type",
    ),
    "Motia's older event shape": (
        'config = {\n    "type": "event",\n    "name": "OldEvent",\n    "subscribes": ["t1"],\n'
        '    "emits": ["t2", {"topic": "t3", "label": "x"}],\n}\ndef handler(x, ctx):\n    pass\n',
        2,
        "OldEvent",
        "type",
        'older step shape ("type": "event" with "subscribes"); write "triggers": [{"type": "queue", '
        '"topic": "t1"}], "enqueues": ["t2", "t3"] instead, and call ctx.enqueue(topic, data)',
    ),
    "Motia's older api shape": (
        'config = {"type": "api", "name": "OldApi", "path": "/old", "method": "PUT", "emits": ["t2"]}\n'
        "def handler(x, ctx):\n    pass\n",
        1,
        "OldApi",
        "type",
        '"triggers": [{"type": "http", "method": "PUT", "path": "/old"}], "enqueues": ["t2"]',
    ),
    "syntax error in a helper it imports": (
        "import broken_helper\n",
        1,
        None,
        None,
        "import failed: syntax error in {root}/broken_helper.py:1",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_broken_step_file_is_reported_with_file_line_step_and_field_and_the_rest_load(tmp_path, case):
    """Given one broken step file next to a good one, when discovered, then there is exactly one error, naming the
    file, the line (where there is one), the step (where it can be known) and the field, with a message that says
    what to fix; and the good step loads."""
    source, line, step, field, words = BROKEN[case]
    root = make_steps(tmp_path / "steps", {"broken_step.py": source, "good_step.py": GOOD})
    (root / "broken_helper.py").write_text("def f(:\n    pass\n")
    result = discover(root)
    assert [s.name for s in result.steps] == ["StillHere"]
    (err,) = result.errors
    file = str(root.resolve() / "broken_step.py")
    assert (err.file, err.line, err.step, err.field) == (file, line, step, field)
    assert words.replace("{root}", str(root.resolve())) in err.message, err.message
    where = file + (f":{line}" if line else "")
    assert str(err).startswith(where + (f", step {step!r}" if step else "") + (f", field {field!r}" if field else "") + ": ")


def test_a_misspelling_is_not_also_reported_as_the_missing_key_it_stands_for(tmp_path):
    """Given "trigers" for "triggers" and a second, unrelated mistake, when discovered, then the message points at
    the misspelling and mentions the other mistake, but not the "missing triggers" the misspelling causes."""
    src = 'config = {"name": "T", "trigers": [], "enqueues": "not-a-list"}\ndef handler(x, ctx):\n    pass\n'
    (err,) = discover(make_steps(tmp_path / "steps", {"t_step.py": src})).errors
    assert err.field == "trigers"
    assert err.message == "unknown field 'trigers'; did you mean 'triggers'? (also check: enqueues)"


def test_ctx_emit_with_a_motia_style_dict_says_to_use_enqueue():
    """Given a handler porting Motia's emit({"topic", "data"}), when it calls ctx.emit with a dict, then it gets a
    TypeError that names ctx.enqueue, and nothing is emitted."""
    from iii_console.core.context import SyncContext
    from iii_console.core.emitter import Emitter

    sent: list = []
    ctx = SyncContext(trace_id="t", step="S", emitter=Emitter(sent.append, worker="w"))
    with pytest.raises(TypeError, match=r"ctx.enqueue\(topic, data\)"):
        ctx.emit({"topic": "x", "data": {}})
    ctx.emit("notification.sent", data={"to": "a"})
    assert [e.type for e in sent] == ["notification.sent"] and sent[0].trace_id == "t" and sent[0].step == "S"


# --- JSON-schema dicts as schemas ----------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 1}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["n"],
    "additionalProperties": False,
    "title": "Counted",
}


def test_a_json_schema_dict_validates_like_motia_and_names_every_problem():
    """Given a Motia dict whose bodySchema and queue input are JSON-schema dicts, when validated, then the step
    loads, good data passes unchanged, and bad data raises InvalidInput listing each field, not retryable."""
    from iii_console.core.steps import InvalidInput, JsonSchema, validate_input

    step = Step.model_validate(
        {
            "name": "J",
            "triggers": [{"type": "http", "path": "/j", "bodySchema": SCHEMA}, {"type": "queue", "topic": "j", "input": SCHEMA}],
        }
    )
    body, inp = step.triggers[0].body_schema, step.triggers[1].input_schema
    assert isinstance(body, JsonSchema) and body == inp
    assert step == Step(name="J", triggers=[http("POST", "/j", body=SCHEMA), queue("j", input=SCHEMA)])
    assert step.describe()["trigger_specs"][0]["body"] == "Counted"
    assert validate_input(body, {"n": 2, "tags": ["a"]}) == {"n": 2, "tags": ["a"]}
    with pytest.raises(InvalidInput) as info:
        validate_input(body, {"n": 0, "tags": [1], "x": True})
    assert sorted(f["field"] for f in info.value.fields) == ["(body)", "n", "tags.0"]
    assert info.value.retryable is False
    with pytest.raises(InvalidInput) as info:
        validate_input(body, {})
    assert info.value.fields == [{"field": "n", "message": '"n" is a required property', "type": "required"}]


def test_a_queue_priority_is_not_a_step_setting():
    """Given a step config with "priority" (priority belongs to queues in iii-config.yaml and to each enqueue), when
    validated, then it is an unknown field rather than a setting silently ignored."""
    with pytest.raises(ValidationError) as info:
        Step.model_validate({"name": "P", "priority": "high", "triggers": [{"type": "queue", "topic": "t"}]})
    assert first_error(info.value)[0] == ("priority",)


def test_an_async_condition_on_a_state_trigger_is_a_step_error(tmp_path):
    """Given a state trigger whose condition is an `async def`, when discovered, then it is a step error naming the
    condition (never awaited, it passed every change); a condition returning a coroutine some other way counts as
    false at run time."""
    from iii_console.core.discovery import discover

    (tmp_path / "async_cond_step.py").write_text(
        "from iii_console import Step, state\n"
        "async def only_paid(change):\n"
        "    return change.new.get('paid')\n"
        "config = Step(name='AsyncCond', triggers=[state('orders', condition=only_paid)])\n"
        "def handler(change, ctx):\n"
        "    pass\n"
    )
    found = discover(tmp_path)
    assert found.steps == [] and len(found.errors) == 1
    assert "condition must be a plain `def`" in str(found.errors[0]) and "async_cond_step.py" in str(found.errors[0])
