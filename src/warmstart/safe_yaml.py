"""The one YAML loader of warmstart: capped before any object is built.

``yaml.safe_load`` runs no code, but it still builds whatever a document
describes: an alias bomb ("billion laughs": ten aliases of ten aliases of ...)
is a few hundred bytes that expand into 10**9 nodes as soon as anything walks
the result (validation, JSON dumping, hashing). So every YAML file a command
reads (bench recipes, ``run`` recipes, schedule files) goes through
:func:`load_yaml`, which

- reads only a regular file of at most :data:`MAX_YAML_BYTES`, as UTF-8 text;
- composes the node graph (aliases are still shared there, so this is cheap),
  counts the nodes it would expand to, and refuses more than
  :data:`MAX_YAML_NODES`, recursive aliases, and more than :data:`MAX_ALIASES`
  alias uses;
- only then constructs Python objects, with the safe constructor.
"""

from __future__ import annotations

import os
from pathlib import Path

from warmstart.errors import WarmstartError
from warmstart.inputs import decode_text, read_bytes

MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_NODES = 100_000
MAX_ALIASES = 1_000


def _expanded_size(root, path, error) -> int:
    """Nodes the document expands to once every alias is copied; refuses cycles and bombs."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    aliases = 0
    # Iterative post-order walk (a deeply nested document must not overflow the stack).
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            sizes[key] = total
            in_progress.discard(key)
            if total > MAX_YAML_NODES:
                raise error(f"YAML document expands to more than {MAX_YAML_NODES} nodes "
                            f"(alias bomb?); refused before building it", path)
            continue
        if key in sizes:
            aliases += 1
            if aliases > MAX_ALIASES:
                raise error(f"YAML document uses more than {MAX_ALIASES} aliases; refused", path)
            continue
        if key in in_progress:
            raise error("YAML document has a recursive alias (a node that contains itself)", path)
        in_progress.add(key)
        stack.append((node, True))
        for child in reversed(_children(node)):
            if id(child) in in_progress:
                raise error("YAML document has a recursive alias (a node that contains itself)", path)
            stack.append((child, False))
    return sizes.get(id(root), 0)


def _children(node) -> list:
    """A YAML node's child nodes (a mapping's keys and values alike)."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, path: str | os.PathLike | None = None, error: type[WarmstartError] = WarmstartError):
    """Parse YAML text with the caps above; syntax errors become one line naming the line."""
    import yaml

    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise error(f"YAML document is larger than {MAX_YAML_BYTES} bytes", path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, path, error)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"not valid YAML{where}: {problem}", path) from None
    except RecursionError:
        raise error("YAML document is nested too deeply", path) from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. an integer of 5000 digits, a bad timestamp
        raise error(f"not valid YAML: {str(err).splitlines()[0] if str(err) else type(err).__name__}", path) from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike, what: str = "YAML file", error: type[WarmstartError] = WarmstartError):
    """Read and parse a YAML file: regular file, UTF-8, capped size and expansion."""
    path = Path(path)
    data = read_bytes(path, what, MAX_YAML_BYTES, error)
    return parse_yaml(decode_text(data, path, what, error), path, error)
