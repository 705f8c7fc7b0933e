"""`selftune-ingest`: the ops command line. One module per noun; errors and exit codes here."""

from __future__ import annotations

import json
import sys

import click

from ops import devices, failed, keys, maintain, migrate, push, quarantine, status, worker, workspaces
from ops.context import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    Group,
    Ops,
    as_command_error,
    fail_on_stderr,
    stdout_is_gone,
)

EPILOG = """\b
Exit codes:
  0    done
  1    the command failed: an unknown push, workspace, key or user code, a refused change
  2    a usage error, a bad setting, or Redis or Postgres unreachable
  130  interrupted (Ctrl-C)

\b
--json goes anywhere on the line; errors are then {"error": {"code": ..., "message": ...}} on stdout.
--workspace takes a workspace's name or its id. Times are ISO 8601 or relative (30m, 2h, 7d).
Settings come from the environment (DATABASE_URL, REDIS_URL, ...: README, "Configuration").
"""


class Root(Group):
    """The root group: turns the expected failures of any command into a CommandError."""

    def invoke(self, ctx: click.Context) -> object:
        """Run the command line; an expected exception becomes a CommandError, a bug keeps its traceback."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise
        except Exception as exc:
            error = as_command_error(exc, ctx.obj if isinstance(ctx.obj, Ops) else None)
            if error is None:
                raise
            raise error from exc


@click.group(cls=Root, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="selftune-ingest", prog_name="selftune-ingest", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Operate selftune ingest: migrations, retention, workspaces, keys, workers, queue status, failed batches."""
    ctx.obj = Ops()
    ctx.call_on_close(ctx.obj.close)


for command in (
    migrate.migrate,
    maintain.maintain,
    workspaces.workspace,
    keys.key,
    worker.worker,
    status.status,
    failed.failed,
    failed.replay,
    quarantine.quarantine,
    push.push,
    devices.device,
):
    cli.add_command(command)


def _wants_json(args: list[str]) -> bool:
    # Read from the arguments, not the parsed flag: a usage error can come before --json is parsed.
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _error(code: str, message: str, exit_code: int, as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message}}))
    else:
        fail_on_stderr(message)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Run `selftune-ingest` with `argv` (default: the process's arguments); return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = _wants_json(args)
    try:
        try:
            code = cli.main(args, prog_name="selftune-ingest", standalone_mode=False)
        except CommandError as exc:
            code = _error(exc.code, exc.message, exc.exit_status, as_json)
        except click.UsageError as exc:
            if as_json:
                code = _error("usage", exc.format_message(), EXIT_USAGE, True)
            else:
                exc.show()  # usage, the error, and a hint to --help, as click prints them
                code = EXIT_USAGE
        except click.ClickException as exc:
            code = _error("failed", exc.format_message(), EXIT_FAILED, as_json)
        except click.Abort:
            code = _error("interrupted", "interrupted", EXIT_INTERRUPTED, as_json)
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is an EPIPE caught below
    except BrokenPipeError:
        stdout_is_gone()
        return EXIT_FAILED
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
