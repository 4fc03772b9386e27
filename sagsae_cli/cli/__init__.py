"""The `sagsae` command line: flags -> config -> one call per stage (one module per group of commands:
``harvest``, ``training``, ``results``; shared options in ``app``). Errors become one line, exit 2."""

from __future__ import annotations

import errno
import sys

import typer

from sagsae_cli.cli import harvest, results, training  # noqa: F401  (each registers its commands)
from sagsae_cli.cli.app import app, store_app
from sagsae_cli.cli.results import PLOT_NAMES
from sagsae_cli.errors import PeerError, SagsaeError, disk_space
from sagsae_cli.progress import console, styled

__all__ = ["PLOT_NAMES", "app", "main", "store_app"]

# the order `sagsae --help` lists the commands in: the pipeline's
ORDER = ("harvest", "train", "eval", "ablate", "pairs", "compare", "plot", "browse")
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    """The console entry point: runs the command, then leaves through `distributed.leave`."""
    from sagsae_cli.allocator import reuse_large_blocks
    from sagsae_cli.distributed import leave

    reuse_large_blocks()  # freed tokens x latents arrays reused, not page-faulted in again (allocator.py)
    try:
        _main()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    if not isinstance(code, int):  # sys.exit("message") prints it and exits 1, as Python does
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    leave(code)


def _main() -> None:
    try:
        with disk_space():  # a full disk outside the store and atomic_write, which name their file
            rc = typer.main.get_command(app).main(prog_name="sagsae", standalone_mode=False)
    except PeerError:
        sys.exit(2)  # rank 0 printed the error
    except SagsaeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _interrupted()
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        where = e.filename or "an output"
        _fail(f"cannot write {where} ({e.strerror or type(e).__name__}): choose another --out / --results, "
              "or fix its permissions")  # fmt: skip
    except OSError as e:
        if e.errno not in (errno.ENAMETOOLONG, errno.EROFS, errno.ELOOP):
            raise
        where = e.filename or "a path"
        fix = {errno.ENAMETOOLONG: "a name in it is longer than the file system allows: choose a shorter path",
               errno.EROFS: "the file system is read-only: choose another --out / --results",
               errno.ELOOP: "it loops through symbolic links: fix the links or choose another path"}[e.errno]  # fmt: skip
        _fail(f"cannot use {where}: {fix}")
    except Exception as e:  # the command-line parser's own exceptions (typer vendors click)
        _parser_error(e)
        raise
    if rc == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130 before we see it
        _interrupted()
    sys.exit(rc if isinstance(rc, int) else 0)


def _parser_error(e: Exception) -> None:
    """Usage errors as one line (exit 2), Ctrl-C as a resume hint (exit 130), explicit exits as is."""
    kinds = {c.__name__ for c in type(e).__mro__}
    ctx = getattr(e, "ctx", None)
    if "NoArgsIsHelpError" in kinds and ctx is not None:
        typer.echo(ctx.get_help())
        sys.exit(2)
    if "UsageError" in kinds:
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else " (see `sagsae --help`)"
        _fail(e.format_message().replace("\n", " ") + hint)
    if "ClickException" in kinds:
        _fail(e.format_message())
    if "Abort" in kinds:
        _interrupted()
    if "Exit" in kinds:
        sys.exit(getattr(e, "exit_code", 0))


def _interrupted() -> None:
    console.print("interrupted: rerun the same command to resume (what was committed is kept)")
    sys.exit(130)


def _fail(message: str) -> None:
    console.print(styled("bold red", "error:", f" {message}"), highlight=False, soft_wrap=True)
    sys.exit(2)
