"""The `warmstart` command line: parse arguments and call the library.

Each subcommand lives in its own module under :mod:`warmstart.commands` and
exposes ``register(subparsers)``; the module registers its parser and sets
``func`` to a callable taking the parsed arguments. Nothing but argument
parsing happens here, and the heavy libraries are imported only by the
command that needs them, so ``warmstart inspect`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

from warmstart import __version__
from warmstart.checkpoint import atomic
from warmstart.checkpoint.atomic import Terminated, install_signal_handlers
from warmstart.errors import WarmstartError


def command_names() -> list[str]:
    """The subcommands: every module of warmstart.commands but the shared helpers."""
    import warmstart.commands as commands

    return sorted(m.name.rstrip("_") for m in pkgutil.iter_modules(commands.__path__) if m.name != "common")


def _summary(name: str) -> str:
    """A command's one-line help, read from its module docstring without importing it."""
    import ast

    import warmstart.commands as commands

    for candidate in (name, name + "_"):
        path = Path(commands.__path__[0]) / f"{candidate}.py"
        if path.is_file():
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            first = doc.strip().splitlines()[0] if doc.strip() else ""
            return first.split(":", 1)[1].strip() if first.startswith("`") and ":" in first else first
    return ""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in `argv` is imported (all of them when `argv` is None).

    A broken command module then breaks that command alone, and
    ``warmstart --help`` imports no command at all.
    """
    parser = argparse.ArgumentParser(
        prog="warmstart",
        description="Start training from checkpoints that already exist.",
    )
    parser.add_argument("--version", action="version", version=f"warmstart {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = command_names()
    wanted = names if argv is None else [a for a in argv if not a.startswith("-")][:1]
    for name in names:
        if name in wanted:
            module = importlib.import_module(f"warmstart.commands.{name if name != 'import' else 'import_'}")
            module.register(sub)
        else:
            sub.add_parser(name, help=_summary(name), add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    install_signal_handlers()
    atomic.COMMAND = ["warmstart", *argv]
    try:
        result = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`warmstart schedule show ... | head -1`): stop quietly, as `cat` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except WarmstartError as err:
        if args.debug:
            raise
        print(f"warmstart: error: {err.line()}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print("warmstart: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("warmstart: interrupted", file=sys.stderr)
        return 130
    finally:
        atomic.COMMAND = None  # a later call of the Python API in this process records no command line
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
