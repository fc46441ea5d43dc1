"""Print the requirements that ``pip install '.[EXTRA,...]'`` would install directly, one per line.

The images install these in a layer of their own before copying the source, so editing the code does not
re-download every wheel; the ``pip install '.[EXTRA]'`` that follows (the README's command) then adds only
the project itself. Usage: ``python3.11 requirements.py pyproject.toml serve gpu``.
"""

from __future__ import annotations

import sys
import tomllib


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: requirements.py PYPROJECT [EXTRA ...]\n")
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
