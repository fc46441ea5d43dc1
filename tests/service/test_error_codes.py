"""Every ``error.code`` the service can answer is in :data:`service.errors.ERROR_CODES` with its status, every entry
there is answered somewhere, and ``/openapi.json`` names them all: clients branch on the code, so a code missing
from the list is one nobody knows to handle, and an entry nothing answers is one they handle for nothing.

The codes are found by reading ``service/**/*.py`` (no server, no model): a ``code=`` argument, a class's ``code``
attribute (``ServiceError`` and ``HTTPException`` subclasses), any ``code = "..."`` assignment, an argument in the
``code`` position of a function that takes one (``error_body``, the middleware's and the protocol's refusals), a
``(status, "code")`` pair in a tuple (``_LIBRARY``, the middleware's refusals, ``status_and_code``'s fallback), a
``{"error": {"code": ...}}`` literal, and the status of every ``HTTPException`` raised without a code, as
``service.errors`` names it (with those Starlette and FastAPI raise themselves).  A dict ``{"code": ...}`` outside
an ``"error"`` is a warning (``warnings[].code``), another list."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.errors import _LIBRARY, ERROR_CODES, ServiceError, http_error_code

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
CODE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
STATUS_PARAMETERS = ("status", "status_code")
HTTP_EXCEPTIONS = {"HTTPException", "StarletteHTTPException"}
# Statuses Starlette and FastAPI raise as HTTPException themselves, answered by service.errors._http_error
FRAMEWORK_STATUSES = {
    400: "FastAPI: a request body it cannot parse",
    401: "StaticFiles: a file it may not read",
    404: "routing: no such path; StaticFiles: no such file",
    405: "routing: a path without this method; StaticFiles: a method other than GET or HEAD",
}
# Codes in the source that no HTTP answer carries
NOT_ANSWERED = {
    ("service/batch_cli.py", "unreadable"): "keepfit batch's row for a file it cannot read, in its output file",
}


@dataclass(frozen=True)
class Emitted:
    code: str
    status: int | None  # None where the source does not say it next to the code
    where: str  # path:line
    warning: bool = False  # a warnings[] entry's code, not an error's


def _code(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.fullmatch(node.value):
        return node.value
    return None


def _status(node: ast.AST | None, constants: dict[str, int] | None = None) -> int | None:
    """An error status written as a number, or as the name of a module's constant (``CLIENT_CLOSED_REQUEST``)."""
    if isinstance(node, ast.Name) and constants and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.Constant) and type(node.value) is int and 400 <= node.value <= 599:
        return node.value
    return None


def _constants(trees: dict[str, ast.Module]) -> dict[str, int]:
    """The modules' top-level ``NAME = <error status>``."""
    return {
        target.id: status
        for tree in trees.values()
        for node in tree.body
        if isinstance(node, ast.Assign) and (status := _status(node.value)) is not None
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _keyword(call: ast.Call, *names: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg in names), None)


def _positional(call: ast.Call, index: int | None) -> ast.AST | None:
    if index is None or any(isinstance(a, ast.Starred) for a in call.args[: index + 1]):
        return None
    return call.args[index] if index < len(call.args) else None


@dataclass(frozen=True)
class _Takes:
    """A function with a ``code`` parameter: where its code and status go among a call's positional arguments."""

    code: int | None
    status: int | None
    method: bool  # its first parameter is self or cls: a call through an attribute passes one fewer


def _code_functions(trees: dict[str, ast.Module]) -> dict[str, _Takes]:
    found: dict[str, _Takes] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            positional = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            if "code" not in positional and "code" not in [a.arg for a in node.args.kwonlyargs]:
                continue
            status = next((positional.index(p) for p in STATUS_PARAMETERS if p in positional), None)
            found[node.name] = _Takes(
                positional.index("code") if "code" in positional else None,
                status,
                bool(positional) and positional[0] in ("self", "cls"),
            )
    return found


@dataclass
class _Class:
    bases: list[str]
    code: str | None
    status: int | None
    line: int


def _classes(tree: ast.Module, constants: dict[str, int] | None = None) -> dict[str, _Class]:
    out: dict[str, _Class] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        info = _Class([b for b in map(_name, node.bases) if b], None, None, node.lineno)
        for item in node.body:
            target, value = None, None
            if isinstance(item, ast.Assign) and len(item.targets) == 1:
                target, value = _name(item.targets[0]), item.value
            elif isinstance(item, ast.AnnAssign):
                target, value = _name(item.target), item.value
            if target == "code":
                info.code = _code(value)
            elif target == "status_code":
                info.status = _status(value, constants)
        for sub in ast.walk(node):  # super().__init__(413, ...): an HTTPException's status
            if (
                info.status is None
                and isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr == "__init__"
            ):
                info.status = _status(_positional(sub, 0), constants) or _status(_keyword(sub, "status_code"), constants)
        out[node.name] = info
    return out


def _root_and_status(name: str, classes: dict[str, _Class]) -> tuple[str, int | None, str | None]:
    """The class ``name`` derives from outside the scanned source (``HTTPException``, ``KeepfitError``...) and its
    status and code, inherited where it sets none."""
    status, code, seen = None, None, set()
    while name in classes and name not in seen:
        seen.add(name)
        info = classes[name]
        status = status if status is not None else info.status
        code = code if code is not None else info.code
        if not info.bases:
            break
        name = info.bases[0]
    return name, status, code


def scan(sources: dict[str, str]) -> list[Emitted]:
    """Every code ``sources`` (path -> Python source) can answer with, or warn with."""
    trees = {path: ast.parse(text, path) for path, text in sources.items()}
    takes = _code_functions(trees)
    constants = _constants(trees)

    def status_of(node: ast.AST | None) -> int | None:
        return _status(node, constants)

    classes: dict[str, _Class] = {}
    for tree in trees.values():
        classes.update(_classes(tree, constants))
    out: list[Emitted] = []
    for path, tree in trees.items():
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

        def at(node: ast.AST, path: str = path) -> str:
            return f"{path}:{getattr(node, 'lineno', 0)}"

        def around(node: ast.AST, parents: dict[ast.AST, ast.AST] = parents) -> int | None:
            """The status of the call ``node`` is an argument of: ``_json(500, error_body(...))``."""
            parent = parents.get(node)
            if not isinstance(parent, ast.Call):
                return None
            status = status_of(_keyword(parent, *STATUS_PARAMETERS))
            return status or next((s for s in map(status_of, parent.args) if s is not None), None)

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                code = _code(_keyword(node, "code"))
                status = status_of(_keyword(node, *STATUS_PARAMETERS))
                name = _name(node.func)
                if name in takes and code is None:
                    t = takes[name]
                    shift = 1 if t.method and isinstance(node.func, ast.Attribute) else 0
                    code = _code(_positional(node, None if t.code is None else t.code - shift))
                    if status is None:
                        status = status_of(_positional(node, None if t.status is None else t.status - shift))
                    if code is not None and status is None and t.status is None:
                        status = around(node)
                if code is not None:
                    out.append(Emitted(code, status, at(node)))
                elif name in HTTP_EXCEPTIONS:
                    raised = status or status_of(_positional(node, 0))
                    if raised is not None:
                        out.append(Emitted(http_error_code(raised), raised, at(node)))
            elif isinstance(node, ast.Assign | ast.AnnAssign) and not isinstance(parents.get(node), ast.ClassDef):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                code = _code(node.value)
                if code is not None and any(_name(t) == "code" for t in targets):
                    out.append(Emitted(code, None, at(node)))
            elif isinstance(node, ast.Tuple):
                for first, second in zip(node.elts, node.elts[1:], strict=False):
                    status, code = status_of(first), _code(second)
                    if status is not None and code is not None:
                        out.append(Emitted(code, status, at(node)))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    code = _code(value) if _code(key) == "code" else None
                    if code is None:
                        continue
                    parent = parents.get(node)
                    in_error = isinstance(parent, ast.Dict) and any(
                        v is node and _code(k) == "error" for k, v in zip(parent.keys, parent.values, strict=True)
                    )
                    out.append(Emitted(code, None, at(node), warning=not in_error))
            elif isinstance(node, ast.ClassDef):
                root, status, code = _root_and_status(node.name, classes)
                if code is not None and classes[node.name].code is not None:
                    out.append(Emitted(code, status, at(node)))
                elif code is None and root in HTTP_EXCEPTIONS and status is not None:
                    out.append(Emitted(http_error_code(status), status, at(node)))
    return out


def service_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(SERVICE.rglob("*.py"))}


@pytest.fixture(scope="module")
def emitted() -> list[Emitted]:
    found = scan(service_sources())
    found += [Emitted(http_error_code(s), s, f"framework: {why}") for s, why in FRAMEWORK_STATUSES.items()]
    return [e for e in found if (e.where.split(":")[0], e.code) not in NOT_ANSWERED]


def test_every_code_the_service_answers_is_registered_with_its_status(emitted: list[Emitted]) -> None:
    errors = [e for e in emitted if not e.warning]
    assert len({e.code for e in errors}) > 30, errors  # the scan found the codes (not a walk that finds nothing)
    unknown = [f"{e.where}: {e.code}" for e in errors if e.code not in ERROR_CODES]
    assert not unknown, "codes answered but not in service.errors.ERROR_CODES:\n" + "\n".join(unknown)
    wrong = [
        f"{e.where}: {e.code} with {e.status}, registered with {ERROR_CODES[e.code][0]}"
        for e in errors
        if e.status is not None and e.status not in ERROR_CODES[e.code][0]
    ]
    assert not wrong, "statuses missing from service.errors.ERROR_CODES:\n" + "\n".join(wrong)


def test_every_registered_code_is_answered_somewhere(emitted: list[Emitted]) -> None:
    answered = {e.code for e in emitted if not e.warning}
    stale = sorted(set(ERROR_CODES) - answered)
    assert not stale, f"in service.errors.ERROR_CODES but answered nowhere in service/: {stale}"
    # each registered status comes with the code somewhere the scan can tell
    statuses = {(e.code, e.status) for e in emitted if not e.warning}
    unseen = [(code, s) for code, (ss, _) in ERROR_CODES.items() for s in ss if (code, s) not in statuses]
    assert not unseen, f"registered statuses no answer comes with: {unseen}"


def test_a_warning_code_is_never_an_error_code(emitted: list[Emitted]) -> None:
    warnings = {e.code: e.where for e in emitted if e.warning}
    assert warnings, "the scan found no warning codes"
    both = {code: where for code, where in warnings.items() if code in ERROR_CODES}
    assert not both, f"codes that are both a warning and an error: {both}"


def test_the_registry_is_ordered_by_status_with_one_sentence_each() -> None:
    firsts = [statuses[0] for statuses, _ in ERROR_CODES.values()]
    assert firsts == sorted(firsts), "ERROR_CODES is ordered by status"
    for code, (statuses, meaning) in ERROR_CODES.items():
        assert CODE.fullmatch(code), code
        assert statuses and all(400 <= s <= 599 for s in statuses) and list(statuses) == sorted(set(statuses)), code
        # the schema's list separates the codes with "; "
        assert meaning.strip() and ";" not in meaning and not meaning.endswith("."), code


def _service_error_modules() -> Iterator[str]:
    """The modules of service/ that define a class deriving from ServiceError (imported: their classes exist)."""
    sources = service_sources()
    classes: dict[str, _Class] = {}
    defined: dict[str, str] = {}
    for path, text in sources.items():
        found = _classes(ast.parse(text, path))
        classes.update(found)
        defined.update(dict.fromkeys(found, path))
    for name, path in defined.items():
        chain, seen = name, set()
        while chain in classes and chain not in seen and chain != "ServiceError":
            seen.add(chain)
            chain = classes[chain].bases[0] if classes[chain].bases else ""
        if chain == "ServiceError":
            yield path.removesuffix(".py").replace("/", ".")


def test_every_service_error_and_library_error_is_registered_with_its_status() -> None:
    for module in set(_service_error_modules()):
        importlib.import_module(module)
    kinds: list[type[ServiceError]] = [ServiceError]
    for kind in kinds:
        kinds.extend(kind.__subclasses__())
    assert len(kinds) > 20, kinds
    wrong = [
        f"{kind.__module__}.{kind.__qualname__}: {kind.status_code} {kind.code}"
        for kind in kinds
        if kind.code not in ERROR_CODES or kind.status_code not in ERROR_CODES[kind.code][0]
    ]
    wrong += [
        f"_LIBRARY {kind.__name__}: {status} {code}"
        for kind, status, code in _LIBRARY
        if code not in ERROR_CODES or status not in ERROR_CODES[code][0]
    ]
    assert not wrong, "not in service.errors.ERROR_CODES with their status:\n" + "\n".join(wrong)


def test_the_openapi_schema_lists_every_code(default_artifact: Path) -> None:
    from service.app import create_app
    from tests.service.helpers import make_settings

    schema = create_app(make_settings(default_artifact)).openapi()
    field = schema["components"]["schemas"]["ErrorInfo"]["properties"]["code"]
    assert field["examples"] == ["invalid_image"]
    description = field["description"]
    for code, (statuses, meaning) in ERROR_CODES.items():
        assert f"`{code}` ({', '.join(map(str, statuses))}): {meaning}" in description, code


# A code added however the service's source emits one is found (and so must be registered)
NEW_CODES = {
    'raise ServiceError("x", code="new_code", status_code=418)': ("new_code", 418),
    'raise ServiceError("x", status_code=451, code="new_code")': ("new_code", 451),
    "class Gone(ServiceError):\n    status_code = 410\n    code = 'new_code'": ("new_code", 410),
    "class Gone(HTTPException):\n    code = 'new_code'\n    def __init__(self):\n        super().__init__(409, 'x')": (
        "new_code", 409),
    "class Teapot(HTTPException):\n    def __init__(self):\n        super().__init__(429, 'x')": (
        "too_many_requests", 429),
    "raise HTTPException(status_code=406)": ("not_acceptable", 406),
    'return _json(409, error_body("new_code", "x"))': ("new_code", 409),
    'JSONResponse(error_body("new_code", "x"), 400)': ("new_code", 400),
    "def refuse(send, status, code, message): ...\nawait refuse(send, 409, 'new_code', 'x')": ("new_code", 409),
    "class P:\n    def _refuse(self, status, code, message): ...\n    def f(self):\n        self._refuse(431, 'new_code', 'x')": (
        "new_code", 431),
    '_NEW = (409, "new_code", "a message", ())': ("new_code", 409),
    'return {"error": {"code": "new_code", "message": "x"}}': ("new_code", None),
    'code = "new_code"': ("new_code", None),
}


@pytest.mark.parametrize("source", list(NEW_CODES), ids=range(len(NEW_CODES)))
def test_the_scan_finds_a_new_code_however_it_is_written(source: str) -> None:
    expected_code, expected_status = NEW_CODES[source]
    # beside service/errors.py, whose error_body takes the code
    errors = (SERVICE / "errors.py").read_text(encoding="utf-8")
    scanned = scan({"service/errors.py": errors, "service/new.py": source})
    found = [e for e in scanned if not e.warning and e.where.startswith("service/new.py:")]
    assert expected_code in {e.code for e in found}, (source, found)
    if expected_status is not None:
        assert (expected_code, expected_status) in {(e.code, e.status) for e in found}, (source, found)
    assert expected_code not in ERROR_CODES  # so the tests above would fail


def test_the_scan_tells_warnings_from_errors() -> None:
    found = scan({"service/new.py": 'warnings.append({"code": "new_warning", "message": "x"})'})
    assert [(e.code, e.warning) for e in found] == [("new_warning", True)]


def test_the_readme_lists_every_code_with_its_statuses() -> None:
    """The README's table of error codes is the registry's: each code once, with the same statuses, in its order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("**Error codes.**", 1)[1].split("\n\n", 2)[1]  # the paragraph, then the table
    rows = re.findall(r"^\| `([a-z_]+)` \| ([0-9, ]+) \|", table, flags=re.MULTILINE)
    assert [(code, tuple(int(s) for s in statuses.split(","))) for code, statuses in rows] == [
        (code, statuses) for code, (statuses, _) in ERROR_CODES.items()
    ]
