"""What every `selftune-ingest` command shares: `--json`, settings, the servers, output and errors.

psycopg, redis, rq and msgspec are imported when a command first needs them, not here: `--help`
and `--version` then start without loading them (see the start-up times in CHANGELOG.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import psycopg
    from redis import Redis

    from runtime.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1  # the command could not do what was asked: not found, refused
EXIT_USAGE = 2  # a usage error, bad settings, or Redis or Postgres unreachable
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

REDIS_CONNECT_TIMEOUT_S = 5
REDIS_SOCKET_TIMEOUT_S = 30
_JSON = "selftune_ingest.json"  # key in click's context meta, shared by every nested context


class CommandError(click.ClickException):
    """An expected failure: one line on stderr (or `{"error": ...}` on stdout), never a traceback."""

    def __init__(self, message: str, code: str = "failed", exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code
        self.exit_status = exit_code


class ServerUnreachable(CommandError):
    """Redis or Postgres cannot be reached: named, with its URL (password masked) and the reason."""

    def __init__(self, server: str, url: str, reason: BaseException) -> None:
        lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
        why = lines[0] if lines else type(reason).__name__
        super().__init__(f"cannot reach {server} at {url}: {why}", f"{server.lower()}_unreachable", EXIT_USAGE)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_JSON] = True


def json_option() -> click.Option:
    """`--json`: accepted by the root, every group and every command, so it goes anywhere on the line."""
    return click.Option(
        ["--json"], is_flag=True, expose_value=False, callback=_remember_json, help="Machine-readable output (JSON)."
    )


class Command(click.Command):
    """A command that takes `--json` wherever it is written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(json_option())


class Group(click.Group):
    """A group whose commands and subgroups take `--json` too."""

    command_class = Command
    group_class = type  # subgroups are Groups as well

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(json_option())


class Ops:
    """One run's view of the service: settings read once, connections opened on first use, output."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._redis: Redis | None = None
        self._postgres: psycopg.Connection | None = None
        self._replica: psycopg.Connection | None = None

    @property
    def json(self) -> bool:
        """Whether `--json` was given (anywhere on the command line)."""
        return bool(click.get_current_context().meta.get(_JSON))

    @property
    def settings(self) -> Settings:
        """The service's settings, from the environment (a bad value is a usage error)."""
        if self._settings is None:
            from runtime.settings import Settings, SettingsError

            try:
                self._settings = Settings.from_env()
            except SettingsError as exc:
                raise CommandError(str(exc), "settings", EXIT_USAGE) from None
        return self._settings

    def url(self, name: str) -> str:
        """A setting's URL with its password masked (Settings.redacted)."""
        return str(self.settings.redacted()[name])

    def redis(self) -> Redis:
        """The Redis client (connects at its first command)."""
        if self._redis is None:
            from runtime.redis_client import redis_client

            self._redis = redis_client(
                self.settings.redis_url,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            )
        return self._redis

    def postgres(self) -> psycopg.Connection:
        """The Postgres connection (autocommit, UTC), opened now; unreachable is a ServerUnreachable."""
        if self._postgres is None:
            import psycopg

            try:
                self._postgres = _connect(self.settings.database_url)
            except psycopg.OperationalError as exc:
                raise ServerUnreachable("Postgres", self.url("database_url"), exc) from None
        return self._postgres

    def postgres_or_none(self) -> psycopg.Connection | None:
        """The Postgres connection, or None when it cannot be reached (for commands that can do without)."""
        self._postgres = _still_open(self._postgres)  # lost since (status --watch): try again
        try:
            return self.postgres()
        except ServerUnreachable:
            return None

    def reports_postgres_or_none(self) -> psycopg.Connection | None:
        """For reports (status, quarantine list, failed list): the replica (DATABASE_READ_URL) if set and up.

        Without a replica, or with it unreachable, the primary (or None when that is down too).
        """
        if self.settings.database_read_url:
            import psycopg

            self._replica = _still_open(self._replica)
            if self._replica is None:
                try:
                    self._replica = _connect(self.settings.database_read_url)
                except psycopg.OperationalError as exc:
                    self.warn(f"the replica is unreachable ({type(exc).__name__}): reading the primary")
            if self._replica is not None:
                return self._replica
        return self.postgres_or_none()

    def workspace_id(self, name_or_id: str | None) -> str | None:
        """The id of a workspace given by name or id (None for None); an unknown one is an error naming it.

        With Postgres unreachable an id-shaped value is taken as it is (the failed registry and
        replay need only Redis, and Postgres being down is when they are used), with a warning.
        """
        if name_or_id is None:
            return None
        from ops import accounts

        if accounts.is_workspace_id(name_or_id):
            conn = self.postgres_or_none()
            if conn is None:
                self.warn(f"Postgres is unreachable: taking {name_or_id} as a workspace id without checking it")
                return name_or_id
        else:
            conn = self.postgres()
        return accounts.find_workspace(conn, name_or_id)

    def emit(self, obj: Any, text: str | Callable[[], str]) -> None:
        """Print `obj` as JSON under --json, else the human `text` (or what the callable returns)."""
        if self.json:
            import msgspec

            click.echo(msgspec.json.encode(obj).decode())
        else:
            out = text if isinstance(text, str) else text()
            if out:  # an empty listing prints nothing, not a blank line
                click.echo(out)

    def warn(self, message: str) -> None:
        """A warning on stderr (also under --json: stdout stays one JSON document)."""
        click.echo(f"warning: {message}", err=True)

    def close(self) -> None:
        """Close the connections this run opened."""
        for conn in (self._postgres, self._replica):
            if conn is not None:
                conn.close()
        if self._redis is not None:
            self._redis.close()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as aligned columns under an upper-case header; None shows as '-'."""
    cells = [["-" if r.get(c) is None else str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def as_command_error(exc: BaseException, ops: Ops | None) -> CommandError | None:
    """The CommandError an expected exception stands for, or None for a bug (whose traceback is wanted)."""
    if isinstance(exc, CommandError):
        return exc
    import psycopg
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from ops.accounts import AccountError, NotFoundError

    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return ServerUnreachable("Redis", ops.url("redis_url") if ops else "REDIS_URL", exc)
    # Connection-level failures only (no SQLSTATE, class 08, or the server shutting down): a lock
    # timeout is an OperationalError too, and a bug to show in full.
    if isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in {"57P01", "57P02", "57P03"}
    ):
        return ServerUnreachable("Postgres", ops.url("database_url") if ops else "DATABASE_URL", exc)
    if isinstance(exc, NotFoundError):
        return CommandError(str(exc), "not_found")
    if isinstance(exc, AccountError):
        return CommandError(str(exc), "refused")
    return None


def fail_on_stderr(message: str) -> None:
    """The one line an error prints without --json."""
    click.echo(f"selftune-ingest: {message}", err=True)


def stdout_is_gone() -> None:
    """After EPIPE (`status | head`): point stdout at /dev/null so the exit flush cannot fail again.

    The recipe of Python's documentation (library/signal.html, "Note on SIGPIPE").
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _connect(url: str) -> psycopg.Connection:
    """A connection as the workers open one (autocommit, UTC)."""
    from workers import db

    return db.connect(url)


def _still_open(conn: psycopg.Connection | None) -> psycopg.Connection | None:
    """The connection, or None (closed) once it was lost."""
    if conn is not None and (conn.closed or conn.broken):
        conn.close()
        return None
    return conn
