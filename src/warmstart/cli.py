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

from warmstart import __version__
from warmstart.checkpoint.atomic import Terminated, install_signal_handlers
from warmstart.errors import WarmstartError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmstart",
        description="Start training from checkpoints that already exist.",
    )
    parser.add_argument("--version", action="version", version=f"warmstart {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import warmstart.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"warmstart.commands.{info.name}")
        if hasattr(module, "register"):  # helper modules (common.py) register nothing
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    install_signal_handlers()
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
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
