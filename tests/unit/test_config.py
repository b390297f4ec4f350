"""iii-config.yaml: defaults, ${VAR:default}, per-topic queues, and errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from iii_console.core.config import Config, QueueConfig, load_config
from iii_console.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "iii-config.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p, env=env or {})
    return info.value


def test_absent_default_file_gives_defaults_rooted_at_cwd(tmp_path, monkeypatch):
    """Given no iii-config.yaml in the working directory, when loading without a path, then every value is the default."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.redis.url == ""
    assert cfg.redis.prefix == "iii:"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 3111)
    assert cfg.events.maxlen == 100_000
    assert cfg.queue("anything") == QueueConfig()
    assert Path(cfg.project_dir) == tmp_path
    assert cfg.source == ""


def test_absent_default_file_still_takes_redis_url_from_env(tmp_path, monkeypatch):
    """Given no config file and REDIS_URL in the environment, when loading, then redis.url is REDIS_URL."""
    monkeypatch.chdir(tmp_path)
    assert load_config(env={"REDIS_URL": "redis://db:6379/2"}).redis.url == "redis://db:6379/2"


def test_explicit_path_that_does_not_exist_is_an_error_naming_it(tmp_path):
    """Given an explicit path to a missing file, when loading, then ConfigError names that file."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(missing, env={})
    assert info.value.file == str(missing)
    assert str(missing) in str(info.value)


def test_empty_file_gives_defaults_and_records_its_source(tmp_path):
    """Given an empty config file, when loading, then values are defaults and source/project_dir point at the file."""
    p = write(tmp_path, "# nothing here\n")
    cfg = load_config(p, env={})
    assert cfg.server.port == 3111
    assert cfg.source == str(p)
    assert Path(cfg.project_dir) == tmp_path.resolve()


@pytest.mark.parametrize(
    "text,env,port,url",
    [
        ("server:\n  port: ${PORT:4000}\n", {}, 4000, ""),
        ("server:\n  port: ${PORT:4000}\n", {"PORT": "5000"}, 5000, ""),
        ("redis:\n  url: ${REDIS_URL:}\n", {}, 3111, ""),
        ("redis:\n  url: redis://${HOST:localhost}:${RPORT:6379}/0\n", {"HOST": "cache"}, 3111, "redis://cache:6379/0"),
    ],
)
def test_interpolation_uses_env_then_default(tmp_path, text, env, port, url):
    """Given ${VAR:default} values, when loading with env, then the env value wins and the default fills in otherwise."""
    cfg = load_config(write(tmp_path, text), env=env)
    assert cfg.server.port == port
    assert cfg.redis.url == url


@pytest.mark.parametrize("value", ["iii:", "[::1]", "a: [", "yes"])
def test_interpolated_text_stays_text(tmp_path, value):
    """Given an env value that looks like YAML, when interpolated into a string field, then it is kept verbatim."""
    cfg = load_config(write(tmp_path, "server:\n  host: ${HOST}\n"), env={"HOST": value})
    assert cfg.server.host == value


def test_interpolated_prefix_default_with_colon_is_a_string(tmp_path):
    """Given prefix: ${P:app:}, when P is unset, then the prefix is the string "app:"."""
    assert load_config(write(tmp_path, "redis:\n  prefix: ${P:app:}\n"), env={}).redis.prefix == "app:"


def test_unset_var_without_default_names_file_line_and_key(tmp_path):
    """Given ${PORT} with PORT unset and no default, when loading, then ConfigError names file, line 3 and server.port."""
    err = config_error(tmp_path, "# header\nserver:\n  port: ${PORT}\n")
    assert (err.line, err.key) == (3, "server.port")
    assert err.file == str(tmp_path / "iii-config.yaml")
    assert f"{err.file}:3: server.port:" in str(err)
    assert "PORT" in str(err) and "not set" in str(err)


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("server:\n  port: 1\nbogus: 2\n", 3, "bogus"),
        ("server:\n  host: a\n  prot: 1\n", 3, "server.prot"),
        (
            "queues:\n  default:\n    max_retries: 2\n  message.sent:\n    retry_delay: 5\n    concurency: 3\n",
            6,
            "queues.message.sent.concurency",
        ),
        ("events:\n\n\n  maxlenn: 500\n", 4, "events.maxlenn"),
    ],
)
def test_unknown_keys_name_file_line_and_dotted_key(tmp_path, text, line, key):
    """Given an unknown key at any depth, when loading, then ConfigError says "unknown key" with its 1-based line and dotted key."""
    err = config_error(tmp_path, text)
    assert (err.line, err.key) == (line, key)
    assert str(err) == f"{tmp_path / 'iii-config.yaml'}:{line}: {key}: unknown key"


@pytest.mark.parametrize(
    "text,line,key,words",
    [
        ("server:\n  port: abc\n", 2, "server.port", "integer"),
        ("server:\n  port: 70000\n", 2, "server.port", "65535"),
        ("queues:\n  default:\n    concurrency: 0\n", 3, "queues.default.concurrency", "greater than or equal to 1"),
        ("queues:\n  default:\n    backoff: linear\n", 3, "queues.default.backoff", "exponential"),
        ("queues:\n  q:\n    dead_letter_queue: 'has space'\n", 3, "queues.q.dead_letter_queue", "pattern"),
        ("events:\n  maxlen: 10\n", 2, "events.maxlen", "100"),
        ("server: 5\n", 1, "server", "valid dictionary"),
    ],
)
def test_bad_values_name_file_line_and_dotted_key(tmp_path, text, line, key, words):
    """Given a value of the wrong type or out of range, when loading, then ConfigError names its line and key and says why."""
    err = config_error(tmp_path, text)
    assert (err.line, err.key) == (line, key)
    assert str(err).startswith(f"{tmp_path / 'iii-config.yaml'}:{line}: {key}: ")
    assert words in str(err)


def test_invalid_yaml_reports_its_line(tmp_path):
    """Given YAML with an unclosed flow list on line 3, when loading, then ConfigError says invalid YAML at a line >= 3."""
    err = config_error(tmp_path, "server:\n  host: a\n  port: [1, 2\nqueues: {}\n")
    assert "invalid YAML" in str(err)
    assert err.line is not None and err.line >= 3
    assert f"iii-config.yaml:{err.line}:" in str(err)


def test_invalid_yaml_bad_indent_reports_the_offending_line(tmp_path):
    """Given a mapping value where a key is expected on line 2, when loading, then the error points at line 2."""
    err = config_error(tmp_path, "server:\n  host: a: b\n")
    assert "invalid YAML" in str(err)
    assert err.line == 2


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("server:\n  port: 1\n  port: 2\n", 3, "server.port"),
        ("events:\n  maxlen: 500\nevents:\n  maxlen: 600\n", 3, "events"),
    ],
)
def test_duplicate_keys_are_rejected_at_the_second_occurrence(tmp_path, text, line, key):
    """Given a key repeated in one mapping, when loading, then ConfigError "duplicate key" names the repeat's line and key."""
    err = config_error(tmp_path, text)
    assert (err.line, err.key) == (line, key)
    assert "duplicate key" in str(err)


def test_top_level_must_be_a_mapping(tmp_path):
    """Given a YAML list as the whole file, when loading, then ConfigError says the top level must be a mapping."""
    err = config_error(tmp_path, "- a\n- b\n")
    assert "top level must be a mapping" in str(err)
    assert err.line == 1


CONFIG = """\
queues:
  default:
    max_retries: 7
    retry_delay: 500
    backoff: fixed
    dead_letter_queue: all-dead
  message.sent:
    retry_delay: 2000
    concurrency: 4
"""


def test_topic_entry_inherits_unset_fields_from_default(tmp_path):
    """Given a topic entry setting only retry_delay and concurrency, when asked for its queue, then the rest comes from default."""
    q = load_config(write(tmp_path, CONFIG), env={}).queue("message.sent")
    assert (q.retry_delay, q.concurrency) == (2000, 4)
    assert (q.max_retries, q.backoff, q.dead_letter_queue) == (7, "fixed", "all-dead")


def test_unlisted_topic_gets_default_entry(tmp_path):
    """Given a default entry, when asked for a topic not listed, then it gets the default entry as written."""
    q = load_config(write(tmp_path, CONFIG), env={}).queue("other.topic")
    assert (q.max_retries, q.retry_delay, q.concurrency) == (7, 500, 10)


def test_topic_entry_without_default_entry_falls_back_to_builtin_defaults(tmp_path):
    """Given only a topic entry, when asked for it, then unset fields are the built-in defaults."""
    q = load_config(write(tmp_path, "queues:\n  t:\n    max_retries: 9\n"), env={}).queue("t")
    assert q == QueueConfig(max_retries=9)


def test_dead_letter_queues_lists_every_named_dlq_once(tmp_path):
    """Given a default DLQ and a topic with its own, when listing DLQs, then each appears once, sorted."""
    text = CONFIG + "    dead_letter_queue: sent.dlq\n  other:\n    max_retries: 1\n"
    assert load_config(write(tmp_path, text), env={}).dead_letter_queues == ["all-dead", "sent.dlq"]


@pytest.mark.parametrize(
    "backoff,base,cap,expected",
    [
        ("exponential", 1000, 3_600_000, [1000, 2000, 4000, 8000, 16000]),
        ("exponential", 1000, 5000, [1000, 2000, 4000, 5000, 5000]),
        ("exponential", 0, 3_600_000, [0, 0, 0, 0, 0]),
        ("fixed", 1500, 3_600_000, [1500, 1500, 1500, 1500, 1500]),
        ("fixed", 9000, 5000, [9000, 9000, 9000, 9000, 9000]),
    ],
)
def test_delay_for_each_retry(backoff, base, cap, expected):
    """Given a backoff strategy, when asking the delay for retries 1..5, then exponential doubles up to the cap and fixed repeats."""
    q = QueueConfig(backoff=backoff, retry_delay=base, max_retry_delay=cap)
    assert [q.delay_for(n) for n in range(1, 6)] == expected


@pytest.mark.parametrize("text", ["", "redis:\n  url: ''\n", "redis:\n  url: ${REDIS_URL:}\n", "redis:\n  prefix: 'app:'\n"])
def test_redis_url_env_fills_an_empty_url(tmp_path, text):
    """Given a file that leaves redis.url empty, when REDIS_URL is set, then redis.url is REDIS_URL."""
    cfg = load_config(write(tmp_path, text or "# empty\n"), env={"REDIS_URL": "redis://h:1/3"})
    assert cfg.redis.url == "redis://h:1/3"


def test_redis_url_env_wins_over_a_url_in_the_file(tmp_path):
    """Given redis.url written in the file, when REDIS_URL is also set, then REDIS_URL is used (environment over file),
    and without it the file's URL is."""
    path = write(tmp_path, "redis:\n  url: redis://file:1/0\n")
    assert load_config(path, env={"REDIS_URL": "redis://env:2/0"}).redis.url == "redis://env:2/0"
    assert load_config(path, env={}).redis.url == "redis://file:1/0"


def test_load_config_does_not_read_os_environ_when_env_is_given(tmp_path, monkeypatch):
    """Given REDIS_URL in os.environ but not in env=, when loading, then redis.url stays empty."""
    monkeypatch.setenv("REDIS_URL", "redis://from-os:1/0")
    assert load_config(write(tmp_path, "server:\n  port: 1\n"), env={}).redis.url == ""


def test_with_overrides_sets_dotted_keys_and_skips_none(tmp_path):
    """Given a loaded config, when overriding redis.url and server.port (and passing None for host), then only those change."""
    cfg = load_config(write(tmp_path, "server:\n  host: 0.0.0.0\n"), env={})
    out = cfg.with_overrides(**{"redis.url": "redis://x:1/0", "server.port": 9000, "server.host": None})
    assert (out.redis.url, out.server.port, out.server.host) == ("redis://x:1/0", 9000, "0.0.0.0")
    assert (out.source, out.project_dir) == (cfg.source, cfg.project_dir)
    assert cfg.redis.url == ""  # the original is untouched


def test_with_overrides_keeps_topic_inheritance(tmp_path):
    """Given a topic entry inheriting from default, when overrides are applied, then the topic still inherits from default."""
    cfg = load_config(write(tmp_path, CONFIG), env={}).with_overrides(**{"redis.url": "redis://x:1/0"})
    q = cfg.queue("message.sent")
    assert (q.max_retries, q.backoff, q.dead_letter_queue, q.retry_delay) == (7, "fixed", "all-dead", 2000)


def test_with_overrides_on_defaults_builds_missing_sections():
    """Given a default Config, when overriding redis.url, then the redis section is created with that URL."""
    assert Config().with_overrides(**{"redis.url": "redis://y:2/0"}).redis.url == "redis://y:2/0"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.evil.example", False),  # a name that only looks like a loopback address may point anywhere
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_only_loopback_addresses_and_localhost_count_as_loopback(host, loopback):
    from iii_console.core.config import ServerConfig

    assert ServerConfig(host=host).loopback is loopback


@pytest.mark.parametrize(
    "url,words",
    [
        ("amqp://guest:secret@127.0.0.1:notaport/%2F", "not a valid AMQP URL (Port could not be cast"),
        ("amqp://127.0.0.1:99999/", "Port out of range"),
        ("amqp://127.0.0.1/?heartbeat=abc", "heartbeat='abc' is not a whole number"),
        ("amqp://127.0.0.1/?socket_timeout=soon", "socket_timeout='soon' is not a number"),
        ("amqp://127.0.0.1/?bogus=1", "unknown AMQP URL option 'bogus'"),
        ("amqp://127.0.0.1/;amqp://127.0.0.1:x/", "(node 2 of 2)"),
    ],
)
def test_an_amqp_url_the_client_would_refuse_names_the_key_and_hides_its_password(tmp_path, url, words):
    """Given a rabbitmq.url whose port, option or option value the RabbitMQ client refuses at its first connection,
    when the config loads (`config check` as much as a start), then it is a ConfigError naming its line and key,
    with the password hidden."""
    import pika

    err = config_error(tmp_path, f"broker: rabbitmq\nrabbitmq:\n  url: '{url}'\n")
    assert (err.line, err.key) == (3, "rabbitmq.url") and words in str(err), str(err)
    assert "secret" not in str(err)
    for part in url.split(";"):  # what the client itself says of each node that was refused
        try:
            pika.URLParameters(part)
        except ValueError:
            break
    else:
        pytest.fail(f"pika takes {url!r}")


def test_the_amqp_url_options_are_the_ones_the_client_takes_and_a_good_url_loads():
    """The options the config accepts are exactly those pika's URLParameters sets, and a URL using them loads and
    is taken by pika."""
    import pika

    from iii_console.core.config import AMQP_URL_OPTIONS

    assert set(AMQP_URL_OPTIONS) == {n[len("_set_url_") :] for n in dir(pika.URLParameters) if n.startswith("_set_url_")}
    url = "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=30&socket_timeout=2.5&connection_attempts=3&locale=en_US"
    cfg = Config.model_validate({"broker": "rabbitmq", "rabbitmq": {"url": url}})
    assert cfg.rabbitmq.url == url
    assert pika.URLParameters(url).heartbeat == 30
