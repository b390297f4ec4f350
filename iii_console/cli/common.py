"""What every command shares: the project's config, the ``--config``/``--redis``
options, the Redis a client command talks to, JSON arguments, and how our errors leave.

Command modules import from here, and :mod:`iii_console.cli.main` imports the command
modules: the arrows point one way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from iii_console.core import replication
from iii_console.core.config import Config, load_config, load_dotenv, redis_url_problem
from iii_console.core.errors import IIIError, RedisUnavailable
from iii_console.core.keys import Keys
from iii_console.core.text import printable


def load_project(config_path: str | None, redis_url: str | None, **overrides: Any) -> Config:
    """The project's config: ``iii-config.yaml`` (or ``--config``) over ``.env``, then the flags."""
    # The project's .env (beside iii-config.yaml), as Motia reads it: under the environment.
    load_dotenv(Path(config_path).resolve().parent if config_path else Path.cwd())
    env = None
    if redis_url is not None:
        problem = redis_url_problem(redis_url.strip())
        if problem:
            raise click.BadParameter(problem, param_hint="--redis")
        # The flag wins over the environment, so a bad REDIS_URL it replaces is no error.
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    cfg = load_config(config_path, env=env)
    # --broker (every command) and RABBITMQ_URL, over the file.
    broker = {"broker": os.environ.get("III_BROKER") or None, "rabbitmq.url": os.environ.get("RABBITMQ_URL") or None}
    return cfg.with_overrides(**{"redis.url": redis_url.strip() if redis_url else redis_url, **broker, **overrides})


def _inherited(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``--config``/``--redis`` given before the subcommand (``iii-console --config c.yaml steps``) are the
    subcommand's too, unless it was given its own on the command line (an environment variable comes after)."""
    from click.core import ParameterSource

    name = param.name or ""
    if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
        return value
    parent = ctx.parent
    while parent is not None:
        if parent.params.get(name) is not None and parent.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            return parent.params[name]
        parent = parent.parent
    return value


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config`` and ``--redis``, which every command takes."""
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        envvar="III_CONFIG",
        callback=_inherited,
        help="Path to iii-config.yaml (default: ./iii-config.yaml).",
    )(fn)
    fn = click.option(
        "--redis",
        "redis_url",
        default=None,
        metavar="URL",
        callback=_inherited,
        help="Redis URL (redis://, rediss://, unix://). Overrides REDIS_URL and the config file.",
    )(fn)
    fn = click.option(
        "--broker",
        type=click.Choice(("redis", "rabbitmq")),
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_set_broker,
        help="Where queue messages live (default: broker in the config, else redis).",
    )(fn)
    return fn


def _set_broker(_ctx: click.Context, _param: Any, value: str | None) -> None:
    """``--broker`` is read by ``load_project`` (through III_BROKER, which worker processes inherit)."""
    if value:
        os.environ["III_BROKER"] = value


def existing_redis(cfg: Config) -> str:
    """Redis for client commands: configured, or the running project's embedded one."""
    from iii_console.core.connection import check_redis
    from iii_console.runtime.embedded import running_url

    url = cfg.redis.url or running_url(cfg.data_dir)
    if not url:
        raise RedisUnavailable("no Redis to talk to: start `iii-console` in this project first, or pass --redis URL")
    check_redis(url)
    return url


def open_client(config_path: str | None, redis_url: str | None) -> tuple[Any, Any, Keys]:
    """The project's config (its Redis URL resolved), a client of that Redis and its keys."""
    from iii_console.core.connection import redis_client

    cfg = load_project(config_path, redis_url)
    url = existing_redis(cfg)
    cfg = cfg.with_overrides(**{"redis.url": url})
    replication.configure(replication.from_config(cfg.redis))  # `dlq replay`, `state set`: WAIT as the roles do
    return cfg, redis_client(url), Keys(cfg.redis.prefix)


class UserError(click.ClickException):
    """An :class:`IIIError` on its way out: one line on stderr, its own exit code."""

    def __init__(self, err: IIIError):
        super().__init__(str(err))
        self.exit_code = err.exit_code  # type: ignore[misc]  # click declares it per class; ours is per error

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {printable(self.message)}", err=True)


def parse_json_arg(text: str, hint: str) -> Any:
    """JSON given on the command line, or a one-line ``BadParameter`` naming ``hint``."""
    from iii_console.core.events import loads_finite

    try:
        return loads_finite(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None
    except RecursionError:
        raise click.BadParameter("JSON nested too deeply (more than ~900 levels)", param_hint=hint) from None
    except ValueError as exc:  # NaN, Infinity, a number too large for a float, an integer of more than 4,300 digits
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None
