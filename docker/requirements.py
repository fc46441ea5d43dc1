"""Print the requirements that ``pip install '.[EXTRA,...]'`` would install directly, one per line; or, with
``--lock REPORT``, the pins of a ``pip install --dry-run --report`` resolve (``make lock`` writes them to
``docker/constraints.txt``).

The images install these in a layer of their own before copying the source, so editing the code does not
re-download every wheel; the ``pip install '.[EXTRA]'`` that follows (the README's command) then adds only
the project itself.  Both steps take ``-c docker/constraints.txt``, so an image built today and one built next
year hold the versions that were tested.  Usage: ``python3.11 requirements.py pyproject.toml serve gpu`` or
``python3.11 requirements.py --lock report.json``.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib

# Never pinned: the project itself, and the installer's own tools (a constraint on them reaches build
# environments and pip's self-upgrade).
_UNPINNED = {"keepfit", "pip", "setuptools", "wheel"}

HEADER = """\
# The versions `make install` and the Docker images install, tested together (pip constraints: a package is
# pinned here only when something asks for it). `pyproject.toml` says what the code needs (lower bounds); this
# file says what was tested. Regenerate with `make lock` (a fresh resolve of every extra, newest allowed
# versions), then run `make test`. `make install CONSTRAINTS=` installs without it.
"""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock(report_path: str) -> str:
    """``name==version`` for every package a resolve would install, sorted; a local version label (torch's
    ``+cpu``) is dropped, so the pin matches the same release from any index."""
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    pins = {}
    for item in report.get("install", []):
        meta = item["metadata"]
        name = meta["name"]
        if _normalise(name) in _UNPINNED:
            continue
        pins[_normalise(name)] = f"{name}=={meta['version'].split('+', 1)[0]}"
    if not pins:
        raise ValueError(f"{report_path} lists nothing to install: is it a `pip install --dry-run --report` file?")
    return HEADER + "".join(f"{pins[key]}\n" for key in sorted(pins))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--lock"]:
        if len(argv) != 2:
            sys.stderr.write("usage: requirements.py --lock REPORT.json\n")
            return 2
        try:
            sys.stdout.write(lock(argv[1]))
        except (OSError, ValueError, KeyError) as err:
            sys.stderr.write(f"error: {err}\n")
            return 1
        return 0
    if not argv:
        sys.stderr.write("usage: requirements.py PYPROJECT [EXTRA ...] | --lock REPORT.json\n")
        return 2
    with open(argv[0], "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    unknown = [name for name in argv[1:] if name not in extras]
    if unknown:
        sys.stderr.write(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(extras)}\n")
        return 2
    requirements = list(project.get("dependencies", []))
    for name in argv[1:]:
        requirements += extras[name]
    sys.stdout.write("".join(f"{r}\n" for r in dict.fromkeys(requirements)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
