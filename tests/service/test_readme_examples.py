"""The README's API examples work as written: every ``curl`` command in the ```bash blocks of the sections named in
``SECTIONS`` is run with the real ``curl`` binary against a live ``keepfit serve`` (the default artifact and a
20-image index of real photographs and angiograms), in README order (the classifier examples build on each other),
each in a folder of its own holding the files it uploads.

Nothing in a command is changed except what ``SUBSTITUTIONS`` lists (the address, placeholders such as
``<admin key>``); the files it names (``eye.jpg``, ``a.jpg``...) are real images (``UPLOADS``). The test adds
only ``-q`` (ignore a developer's ``~/.curlrc``) and ``-D FILE`` (dump the headers, to read the HTTP status: the
exit code says nothing for a line without ``-f``). A command passes when curl exits 0, the
status is 2xx, a JSON answer parses, and the answer has what the README promises:

- a JSON object at the start of the command's comment (``# {"status":"ok"}: alive``): its keys;
- the abridged classify answer (the ```json block after "A classification answer"): every key, nested keys
  included, in every zero-shot classify answer (keys only, never values);
- per endpoint (``ROUTE_CHECKS``), the fields its comment or the prose beside it names, and what its form fields
  ask for (``top_k``, ``decision``, a ``modality`` or ``label`` filter, ``size``...).

A curl line added to these sections later is picked up and must work too; one that this test cannot run (shell
syntax, a new placeholder) fails with what to do. The block's comment "with KEEPFIT_API_KEYS set, add -H
'X-API-Key: <key>' to every /v1 call" is checked on a second server with keys.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from PIL import Image

from tests.frontend.harness import Service, running_service
from tests.service.helpers import build_index
from tests.service.servers import require_binary


def live(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of a test that runs curl against a live server over ../shared/data (about 14 s in all)."""
    return pytest.mark.data(pytest.mark.integration(pytest.mark.slow(test)))


ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# the sections whose ```bash blocks are run; every curl command in them must work
SECTIONS = ("## The API", "## Your own categories: few-shot classifiers")
ADMIN_KEY = "readme-admin-key"
API_KEY = "readme-api-key"


# ------------------------------------------------------------------------------------------ substitutions
@dataclass(frozen=True)
class Substitution:
    find: str
    replace: str | tuple[str, ...]  # a str replaces the text inside any word; a tuple replaces a whole word
    why: str


# What a README command cannot run as written, and what it becomes here. Only these change; every entry must still
# be needed (test_every_substitution_is_still_needed), so this table cannot hide a fixed example.
SUBSTITUTIONS: tuple[Substitution, ...] = (
    Substitution("localhost:8000", "{address}", "the live server listens on a free port"),
    Substitution("<admin key>", ADMIN_KEY, f"the server runs with KEEPFIT_ADMIN_KEYS={ADMIN_KEY}"),
    Substitution("<key>", API_KEY, f"the keyed server runs with KEEPFIT_API_KEYS={API_KEY} (block comment)"),
)

DME, NO_DME = "diabetic macular edema", "no diabetic macular edema"
BRVO, NORMAL = "branch retinal vein occlusion", "normal"
NPA, NO_NPA = "non-perfusion area", "no non-perfusion area"

# The files the commands upload, by the name they use: real colour fundus photographs of cfp_oct_mx, (split, DME
# label, n): the nth row by path (NO_DME: a healthy eye, graded "no diabetic retinopathy" too). eye.jpg is a
# healthy eye of the test split, as the README's scikit-image retina.jpg is (scikit-image is not installed);
# a.jpg..d.jpg are the referable-dr classifier's CFP examples (referable: DME; not referable: healthy).
UPLOADS: dict[str, tuple[str, str, int]] = {
    "eye.jpg": ("test", NO_DME, 0),
    "a.jpg": ("val", DME, 0),
    "b.jpg": ("val", DME, 1),
    "c.jpg": ("val", NO_DME, 0),
    "d.jpg": ("val", NO_DME, 1),
}

# The index. Ids are handed out from 1 in manifest order (the fixture checks every id through /v1/images/{id}),
# so the manifest is laid out to make the README's ids mean what its examples need: /v1/images/17 is an image;
# the ffa-dx classifier's "ids": [12, 15, 19] are FFA branch retinal vein occlusion, and its "index_label":
# "normal" finds FFA images only (ids 9, 10, 14, 17); the search filters find CFP and "diabetic macular edema".
# Train split (the uploads are val and test); CFP by the DME label (NO_DME: healthy), FFA by the diagnosis.
INDEX_PLAN: tuple[tuple[str, str], ...] = (  # (modality, label) of ids 1, 2, 3...
    *[("CFP", DME)] * 4,  # 1-4
    *[("CFP", NO_DME)] * 4,  # 5-8
    ("FFA", NORMAL),  # 9
    ("FFA", NORMAL),  # 10
    ("FFA", NPA),  # 11
    ("FFA", BRVO),  # 12
    ("FFA", NO_NPA),  # 13
    ("FFA", NORMAL),  # 14
    ("FFA", BRVO),  # 15
    ("FFA", NPA),  # 16
    ("FFA", NORMAL),  # 17
    ("FFA", NO_NPA),  # 18
    ("FFA", BRVO),  # 19
    ("FFA", BRVO),  # 20
)


# --------------------------------------------------------------------------------------------- the README
@dataclass(frozen=True)
class Command:
    """One command of a bash block, as bash reads it (continuations joined, comments apart)."""

    section: str
    line: int  # README line of its first line
    code: str  # without comments
    comment: str  # its comments, joined
    shell_syntax: str = ""  # unquoted shell operators or expansions it uses (this test runs no shell)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def section_lines(text: str) -> dict[str, list[tuple[int, str]]]:
    """Each ``## `` section's lines with their 1-based numbers, up to the next ``## `` heading outside code."""
    out: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            current = out.setdefault(line.rstrip(), [])
            continue
        if current is not None:
            current.append((number, line))
    return out


def fenced_blocks(lines: list[tuple[int, str]], language: str) -> list[tuple[int, str]]:
    """The ```language blocks among ``lines``: (line number of the block's first line, its text)."""
    blocks: list[tuple[int, str]] = []
    body: list[str] | None = None
    first = 0
    indent = 0
    for number, line in lines:
        stripped = line.strip()
        if body is None and stripped == f"```{language}":
            body, first, indent = [], number + 1, len(line) - len(line.lstrip())
        elif body is not None and stripped == "```":
            blocks.append((first, "\n".join(body)))
            body = None
        elif body is not None:
            body.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def split_commands(block: str, first_line: int, section: str) -> list[Command]:
    """A bash block's commands: a newline ends one unless quoted or escaped (``\\`` + newline joins lines); ``#``
    at the start of a word outside quotes comments out the rest of the line. Lines holding only a comment give a
    command with empty ``code``."""
    commands: list[Command] = []
    code: list[str] = []
    comment: list[str] = []
    operators: list[str] = []
    quote = ""
    in_comment = False
    line = start = first_line
    i = 0
    while i <= len(block):
        c = block[i] if i < len(block) else "\n"
        if in_comment and c != "\n":
            comment.append(c)
        elif quote:
            code.append(c)
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(block):
                code.append(block[i + 1])
                i += 1
        elif c == "\\" and i + 1 < len(block):
            if block[i + 1] != "\n":
                code.append(block[i : i + 2])  # an escaped character
            i += 1  # a backslash-newline joins the lines: both vanish, as in bash
        elif c in "'\"":
            quote = c
            code.append(c)
        elif c == "#" and (not code or code[-1] in " \t"):
            in_comment = True
        elif c == "\n":
            in_comment = False
            text, remark = "".join(code).strip(), " ".join("".join(comment).split())
            if text or remark:
                commands.append(Command(section, start, text, remark, " ".join(dict.fromkeys(operators))))
            code, comment, operators = [], [], []
            start = line + 1
        else:
            if c in ";|&<>()`$":
                operators.append(c)
            code.append(c)
        if i < len(block) and block[i] == "\n":
            line += 1
        i += 1
    return commands


def readme_commands(text: str) -> list[Command]:
    """Every command (and comment line) of the ```bash blocks in ``SECTIONS``, in README order."""
    sections = section_lines(text)
    out: list[Command] = []
    for name in SECTIONS:
        for first, block in fenced_blocks(sections.get(name, []), "bash"):
            out += split_commands(block, first, name)
    return out


README_TEXT = README.read_text(encoding="utf-8") if README.is_file() else ""
COMMANDS = [c for c in readme_commands(README_TEXT) if c.code]
COMMENTS = [c.comment for c in readme_commands(README_TEXT) if c.comment]


def readme_classify_answer() -> dict[str, Any]:
    """The README's abridged classify answer: the first ```json block of "## The API" after the sentence that
    begins "A classification answer"."""
    lines = section_lines(README_TEXT).get("## The API", [])
    intro = next((n for n, line in lines if line.startswith("A classification answer")), None)
    assert intro is not None, 'README: "## The API" no longer has the paragraph "A classification answer ..."'
    blocks = [(first, text) for first, text in fenced_blocks(lines, "json") if first > intro]
    assert blocks, f"README.md:{intro}: no ```json block follows"
    first, text = blocks[0]
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as err:
        raise AssertionError(f"README.md:{first}: the example classify answer is not JSON: {err}") from err
    assert isinstance(answer, dict) and "predictions" in answer, f"README.md:{first}: not a classify answer"
    return answer


# ------------------------------------------------------------------------------------------- a curl call
@dataclass
class Call:
    """What a curl command asks for, read from its words (after substitution)."""

    method: str
    url: str
    path: str
    query: dict[str, str]
    fields: dict[str, list[str]]  # -F name=value, values as written (@file included)
    body: Any  # -d, parsed when it is JSON
    output: str | None  # -o

    def params(self) -> dict[str, Any]:
        """The request's parameters: a JSON body's members, else the form fields' first values."""
        if isinstance(self.body, dict):
            return self.body
        return {k: v[0] for k, v in self.fields.items()}


NO_CALL = Call(method="", url="", path="", query={}, fields={}, body=None, output=None)
VALUE_OPTIONS = {
    "-F", "--form", "-H", "--header", "-d", "--data", "--data-raw", "--data-binary", "--json", "-X", "--request",
    "-o", "--output", "-D", "--dump-header", "-w", "--write-out", "-u", "--user", "-A", "--user-agent", "-e",
    "--referer", "-m", "--max-time", "--connect-timeout", "-T", "--upload-file", "-b", "--cookie", "-r", "--range",
}  # fmt: skip


def read_call(words: list[str]) -> Call:
    urls: list[str] = []
    fields: dict[str, list[str]] = {}
    method = output = None
    data: str | None = None
    i = 1
    while i < len(words):
        word = words[i]
        value = words[i + 1] if word in VALUE_OPTIONS and i + 1 < len(words) else None
        if word in ("-F", "--form") and value is not None:
            name, _, content = value.partition("=")
            fields.setdefault(name, []).append(content)
        elif word in ("-d", "--data", "--data-raw", "--data-binary", "--json"):
            data = value
        elif word in ("-X", "--request"):
            method = value
        elif word in ("-o", "--output"):
            output = value
        elif not word.startswith("-"):
            urls.append(word)
        i += 2 if value is not None else 1
    assert len(urls) == 1, f"expected one URL, found {urls}"
    url = urls[0] if "://" in urls[0] else f"http://{urls[0]}"
    parts = urlsplit(url)
    body: Any = data
    if data is not None:
        try:
            body = json.loads(data)
        except json.JSONDecodeError:
            pass
    return Call(
        method=method or ("POST" if fields or data is not None else "GET"),
        url=url,
        path=parts.path,
        query=dict(parse_qsl(parts.query)),
        fields=fields,
        body=body,
        output=output,
    )


PLACEHOLDER = re.compile(r"<[A-Za-z][\w .-]*>")  # <key>, <admin key>...


def substitute(words: list[str], address: str) -> list[str]:
    out: list[str] = []
    for word in words:
        replaced: list[str] = [word]
        for sub in SUBSTITUTIONS:
            if isinstance(sub.replace, tuple):
                if replaced == [sub.find]:
                    replaced = list(sub.replace)
            else:
                replaced = [w.replace(sub.find, sub.replace.format(address=address)) for w in replaced]
        out += replaced
    return out


@dataclass(repr=False)
class Result:
    command: Command
    argv: list[str]  # as run (after substitution, with the test's -q and -D)
    call: Call
    returncode: int
    stdout: bytes
    stderr: str
    status: int | None
    headers: dict[str, str]  # the final response's, names in lower case
    workdir: Path
    answer: Any = None  # the parsed JSON answer
    json_error: str = ""
    server_log: str = ""
    problem: str = ""  # why it was not run

    def __repr__(self) -> str:  # pytest shows it in assertion messages: the README line, not every field
        return f"<{self.command.id}: curl exit {self.returncode}, HTTP {self.status}>"

    def describe(self) -> str:
        shown = self.stdout[:1500].decode("utf-8", "replace")
        # curl's own messages, not its progress meter
        said = "\n".join(line for line in self.stderr.splitlines() if line.startswith("curl:"))
        return (
            f"{self.command.id} ({self.command.section}): {self.command.code}\n"
            f"  ran: {shlex.join(self.argv)}\n  curl exit {self.returncode}, HTTP {self.status}\n"
            f"  stdout: {shown}"
            + (f"\n  stderr: {said}" if said else "")
            + (f"\n  server log: {self.server_log}" if self.server_log else "")
        )


def final_headers(dump: str) -> tuple[int | None, dict[str, str]]:
    """The last response of a ``-D`` dump (after any ``100 Continue``): its status and headers."""
    status: int | None = None
    headers: dict[str, str] = {}
    for line in dump.splitlines():
        if line.startswith("HTTP/"):
            status, headers = int(line.split()[1]), {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def curl_env() -> dict[str, str]:
    """The environment without proxies (the server is local) or a developer's curl settings."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "curl_home"}
    return {k: v for k, v in os.environ.items() if k.lower() not in drop}


class ReadmeRun:
    """The README's commands run in order against one server, each once, when first asked for."""

    def __init__(
        self,
        service: Service,
        uploads: dict[str, Path],
        workroot: Path,
        v1_extra: tuple[str, ...] = (),  # words added after `curl` to every /v1 call
    ) -> None:
        self.service = service
        self.address = service.base.removeprefix("http://")
        self.uploads = uploads
        self.workroot = workroot
        self.v1_extra = v1_extra
        self.results: dict[int, Result] = {}
        self.curl = shutil.which("curl") or "curl"

    def result(self, n: int) -> Result:
        for k in range(n + 1):
            if k not in self.results:
                self.results[k] = self._run(k, COMMANDS[k])
        return self.results[n]

    def all(self) -> list[Result]:
        return [self.result(n) for n in range(len(COMMANDS))] if COMMANDS else []

    def _run(self, n: int, command: Command) -> Result:
        workdir = self.workroot / f"{n:02d}-line{command.line}"
        workdir.mkdir(parents=True)
        for name, source in self.uploads.items():
            shutil.copyfile(source, workdir / name)
        words: list[str] = []
        try:
            words = substitute(shlex.split(command.code, comments=True), self.address)
            if command.shell_syntax:
                raise ValueError(f"it uses shell syntax ({command.shell_syntax})")
            if words[0] != "curl":
                raise ValueError("it is not a curl command")
            unknown = [w for w in words if PLACEHOLDER.search(w)]
            if unknown:
                raise ValueError(f"a placeholder that SUBSTITUTIONS does not replace: {unknown}")
            call = read_call(words)
        except (ValueError, AssertionError) as err:
            problem = f"cannot run it: {err}; this test runs single curl commands: teach it this one"
            return Result(command, words, NO_CALL, -1, b"", "", None, {}, workdir, problem=problem)
        extra = list(self.v1_extra) if call.path.startswith("/v1/") else []
        dump = workdir.parent / f"{workdir.name}.headers"
        argv = [self.curl, "-q", "-D", str(dump), *extra, *words[1:]]
        done = subprocess.run(argv, cwd=workdir, capture_output=True, timeout=120, env=curl_env())
        status, headers = final_headers(dump.read_text(errors="replace") if dump.is_file() else "")
        result = Result(
            command=command,
            argv=argv,
            call=call,
            returncode=done.returncode,
            stdout=done.stdout,
            stderr=done.stderr.decode("utf-8", "replace"),
            status=status,
            headers=headers,
            workdir=workdir,
        )
        if headers.get("content-type", "").startswith("application/json"):
            raw = (workdir / call.output).read_bytes() if call.output else done.stdout
            try:
                result.answer = json.loads(raw)
            except json.JSONDecodeError as err:
                result.json_error = str(err)
        if status is None or status >= 500:
            result.server_log = self.service.tail()[-2000:]
        return result


# ---------------------------------------------------------------------------------------------- checks
def missing_keys(promised: Any, real: Any, path: str = "") -> list[str]:
    """Where ``real`` lacks a key that ``promised`` (an example answer in the README) shows, nested keys included.
    Keys only, never values; a promised list's entries are compared with every entry of the real list."""
    if isinstance(promised, dict):
        if not isinstance(real, dict):
            return [f"{path or '(top)'} (an object in the README, {type(real).__name__} in the answer)"]
        out: list[str] = []
        for key, value in promised.items():
            where = f"{path}.{key}" if path else key
            out += [where] if key not in real else missing_keys(value, real[key], where)
        return out
    if isinstance(promised, list):
        if not isinstance(real, list):
            return [f"{path} (a list in the README, {type(real).__name__} in the answer)"]
        entries = [e for e in promised if isinstance(e, dict | list)]
        if entries and not real:
            return [f"{path}[] (entries in the README, none in the answer)"]
        found = [m for e in entries for item in real for m in missing_keys(e, item, f"{path}[]")]
        return list(dict.fromkeys(found))
    return []


def has(obj: Any, dotted: str) -> bool:
    """``obj`` has the key path ``dotted`` (``a.b``; ``a[].b``: ``a`` is a non-empty list whose every entry has b)."""
    head, _, rest = dotted.partition(".")
    if head.endswith("[]"):
        items = obj.get(head[:-2]) if isinstance(obj, dict) else None
        return isinstance(items, list) and bool(items) and all(not rest or has(i, rest) for i in items)
    if not isinstance(obj, dict) or head not in obj:
        return False
    return not rest or has(obj[head], rest)


def require(r: Result, *paths: str) -> None:
    absent = [p for p in paths if not has(r.answer, p)]
    assert not absent, f"the answer lacks {absent} that the README promises\n{r.describe()}"


ROUTE_CHECKS: list[tuple[str, re.Pattern[str], Callable[[Result], None]]] = []


def route(method: str, pattern: str) -> Callable[[Callable[[Result], None]], Callable[[Result], None]]:
    def register(check: Callable[[Result], None]) -> Callable[[Result], None]:
        ROUTE_CHECKS.append((method, re.compile(pattern), check))
        return check

    return register


@route("GET", r"/readyz")
def _readyz(r: Result) -> None:
    # "200 ready / 503 not_ready with a reason"; "index.loaded"; "Its `compute` block"
    require(r, "status", "reason", "index.loaded", "compute.cores")
    assert r.answer["status"] == "ready" and r.answer["index"]["loaded"] is True, r.describe()


@route("GET", r"/v1/categories")
def _categories(r: Result) -> None:
    # "modalities (default sets), screened, tasks, known, aliases, abbreviations"
    require(r, "modalities", "screened", "tasks", "known", "aliases", "abbreviations")


@route("POST", r"/v1/classify")
def _classify(r: Result) -> None:
    a, params = r.answer, r.call.params()
    require(r, "modality.requested", "modality.used", "modality.detected", "warnings", "predictions[].label")
    require(r, "predictions[].probability", "intended_use")
    codes = [w["code"] for w in a["warnings"]]
    if "classifier" in params:
        # "classify answers carry `classifier: {name, version, revision, method, estimate}`"
        require(r, *(f"classifier.{k}" for k in ("name", "version", "revision", "method", "estimate")))
        assert a["classifier"]["name"] == params["classifier"], r.describe()
    else:  # the abridged answer's keys: test_every_classify_answer_has_the_readme_answers_keys
        sent = r.call.fields.get("categories", [])
        if sent:
            assert {p["label"] for p in a["predictions"]} <= set(sent), r.describe()
        if "top_k" in params:
            assert len(a["predictions"]) == int(params["top_k"]), r.describe()
        if "decision" in params:  # "one softmax instead of screening": the answer says which was applied
            assert a["decision"] == params["decision"], r.describe()
        if params.get("explain") == "true":  # "+ heat maps and matched expert descriptions"
            require(r, "explanations[].heatmap.png", "explanations[].heatmap.localised")
            require(r, "explanations[].heatmap.image_size", "explanations[].descriptions[].text")
    if "modality" in params:
        assert a["modality"]["requested"] == a["modality"]["used"] == params["modality"], r.describe()
    # "warns if the image is not OCT"; a classifier's answer too, "when the image looks like another modality"
    if a["modality"]["detected"] != a["modality"]["used"]:
        assert "modality_mismatch" in codes, r.describe()


@route("POST", r"/v1/search")
def _search(r: Result) -> None:
    # "A search answer carries `score_scale` (...) and `low_similarity`"; hits: thumbnail_url, image_url, sha256...
    require(r, "score_scale.metric", "score_scale.min", "score_scale.max", "score_scale.low_below")
    require(
        r, "low_similarity", "warnings", "hits[].id", "hits[].score", "hits[].sha256", "hits[].same_image"
    )
    require(r, "hits[].image_url", "hits[].thumbnail_url", "hits[].modality", "hits[].labels")
    a, params = r.answer, r.call.params()
    assert 0 < len(a["hits"]) <= a["top_k"] == int(params.get("top_k", a["top_k"])), r.describe()
    if "modality" in params:
        assert all(h["modality"] == params["modality"] for h in a["hits"]), r.describe()
    if "label" in params:
        assert all(params["label"].casefold() in [x.casefold() for x in h["labels"]] for h in a["hits"]), (
            r.describe()
        )
    assert a["warnings"] == [], f"the test's index should hold what the example filters on\n{r.describe()}"


@route("GET", r"/v1/images/\d+")
def _image(r: Result) -> None:
    # "an indexed image by id (omit size: original)"; `-o thumb.jpg` saves it
    assert r.headers.get("content-type", "").startswith("image/"), r.describe()
    data = (r.workdir / r.call.output).read_bytes() if r.call.output else r.stdout
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if "size" in r.call.query:
            assert max(image.size) == int(r.call.query["size"]), (image.size, r.describe())


@route("POST", r"/v1/embed")
def _embed(r: Result) -> None:
    # "vectors for integrators"
    require(r, "embedding", "dim", "kind", "model_version")
    vector = r.answer["embedding"]
    assert len(vector) == r.answer["dim"] and all(isinstance(x, float) for x in vector), r.describe()


@route("GET", r"/metrics")
def _metrics(r: Result) -> None:
    # "Prometheus: requests, per-stage latencies, cache hits/misses, model jobs, refused connections"
    text = r.stdout.decode()
    families = ["keepfit_requests_total", "keepfit_stage_duration_seconds", "keepfit_cache_hits_total"]
    families += ["keepfit_cache_misses_total", "keepfit_model_jobs", "keepfit_connections_refused_total"]
    absent = [f for f in families if f"# TYPE {f} " not in text]
    assert not absent, f"no {absent} in /metrics\n{r.describe()}"


CLASSIFIER_KEYS = (
    "name",
    "version",
    "revision",
    "method",
    "estimate",
    "categories[].label",
    "categories[].examples",
)


@route("POST", r"/v1/classifiers")
def _create_classifier(r: Result) -> None:
    # "The answer to a create reports `estimate`: the balanced accuracy ... with `chance` beside it. `method`
    # says what was fitted, `version` ... and `revision` identify it"
    require(r, *CLASSIFIER_KEYS, "estimate.balanced_accuracy", "estimate.chance")
    assert r.answer["name"] == r.call.params()["name"], r.describe()


@route("GET", r"/v1/classifiers")
def _list_classifiers(r: Result) -> None:
    # "list: categories, example counts, estimate, artifact"
    require(r, *(f"classifiers[].{k}" for k in ("categories[].examples", "examples", "estimate", "artifact")))


@route("GET", r"/v1/classifiers/[^/]+")
def _show_classifier(r: Result) -> None:
    require(r, *CLASSIFIER_KEYS, "artifact")
    assert r.answer["name"] == r.call.path.rsplit("/", 1)[1], r.describe()


@route("POST", r"/v1/classifiers/[^/]+/refit")
def _refit_classifier(r: Result) -> None:
    require(r, *CLASSIFIER_KEYS)
    assert r.answer["name"] == r.call.path.split("/")[-2], r.describe()


def check(r: Result) -> None:
    """What every README command must do, then what its endpoint's answer must hold."""
    assert not r.problem, f"{r.command.id} ({r.command.section}): {r.command.code}\n  {r.problem}"
    assert r.returncode == 0, f"curl failed\n{r.describe()}"
    assert r.status is not None and 200 <= r.status < 300, f"HTTP {r.status}\n{r.describe()}"
    assert not r.json_error, f"the JSON answer does not parse: {r.json_error}\n{r.describe()}"
    if r.command.comment.startswith("{"):  # a comment that shows the answer: `# {"status":"ok"}: alive`
        promised, _ = json.JSONDecoder().raw_decode(r.command.comment)
        absent = missing_keys(promised, r.answer)
        assert not absent, f"the answer lacks {absent} that the comment shows\n{r.describe()}"
    for method, pattern, route_check in ROUTE_CHECKS:
        if r.call.method == method and pattern.fullmatch(r.call.path):
            route_check(r)


# -------------------------------------------------------------------------------------------- fixtures
def require_curl() -> str:
    return require_binary("curl", ": the README's examples are curl commands")


def _sorted_rows(labels_csv: Path) -> list[dict[str, str]]:
    with labels_csv.open(newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: r["path"])


def _cfp_rows(data_root: Path, split: str, dme: str) -> list[dict[str, str]]:
    """cfp_oct_mx photographs of a split with this DME label (NO_DME: healthy, also graded without DR), by path."""
    return [
        r
        for r in _sorted_rows(data_root / "cfp_oct_mx" / "labels.csv")
        if r["modality"] == "CFP" and r["split"] == split and r["dme"] == dme
        and (dme == DME or r["dr"] == "no diabetic retinopathy")
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uploads(data_root: Path) -> dict[str, Path]:
    chosen: dict[str, Path] = {}
    for name, (split, dme, nth) in UPLOADS.items():
        chosen[name] = data_root / "cfp_oct_mx" / _cfp_rows(data_root, split, dme)[nth]["path"]
    # angiogram.jpg: an angiogram of branch retinal vein occlusion from the test split, for the FFA classifier
    ffa = [r for r in _sorted_rows(data_root / "ffa_huapu4" / "labels.csv")
           if r["split"] == "test" and r["task"] == "disease_diagnosis" and r["label"] == BRVO]
    chosen["angiogram.jpg"] = data_root / "ffa_huapu4" / ffa[0]["path"]
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in chosen.values()}) == len(chosen)
    return chosen


@pytest.fixture(scope="module")
def index_dir(data_root: Path, default_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``INDEX_PLAN`` built with ``keepfit index build`` (train-split images, the first unused of each label)."""
    ffa = [r for r in _sorted_rows(data_root / "ffa_huapu4" / "labels.csv") if r["split"] == "train"]
    pools = {
        ("CFP", label): [data_root / "cfp_oct_mx" / r["path"] for r in _cfp_rows(data_root, "train", label)]
        for label in (DME, NO_DME)
    }
    for label in (NORMAL, BRVO, NPA, NO_NPA):
        diagnosed = [r for r in ffa if r["task"] == "disease_diagnosis" and r["label"] == label]
        pools["FFA", label] = [data_root / "ffa_huapu4" / r["path"] for r in diagnosed]
    rows = []
    for modality, label in INDEX_PLAN:
        path = pools[modality, label].pop(0)
        rows.append({"path": str(path), "modality": modality, "diagnosis": label})
    work = tmp_path_factory.mktemp("readme-index")
    out = build_index(rows, work, default_artifact, "--no-progress", "--threads", "1")
    (work / "plan.json").write_text(json.dumps([r["path"] for r in rows]))
    return out


def check_index_ids(base: str, index_dir: Path) -> None:
    """Every id of ``INDEX_PLAN`` serves the image planned for it (by SHA-256 of the original)."""
    paths = json.loads((index_dir.parent / "plan.json").read_text())
    for number, path in enumerate(paths, 1):
        r = httpx.get(f"{base}/v1/images/{number}", timeout=30)
        assert r.status_code == 200, (number, r.text)
        planned = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert hashlib.sha256(r.content).hexdigest() == planned, f"id {number} is not {path}: ids moved"


@pytest.fixture(scope="module")
def readme_run(
    index_dir: Path,
    default_artifact: Path,
    uploads: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ReadmeRun]:
    """One ``keepfit serve`` for all the commands: the index, an admin key, a classifier store of its own."""
    require_curl()
    work = tmp_path_factory.mktemp("readme-examples")
    env = {"KEEPFIT_ADMIN_KEYS": ADMIN_KEY, "KEEPFIT_CLASSIFIERS": str(work / "classifiers")}
    with running_service(default_artifact, index_dir, work / "serve.log", env) as service:
        check_index_ids(service.base, index_dir)
        yield ReadmeRun(service, uploads, work / "commands")


# ----------------------------------------------------------------------------------------------- tests
def test_the_sections_hold_curl_examples() -> None:
    sections = section_lines(README_TEXT)
    for name in SECTIONS:
        assert name in sections, f"README.md has no section {name!r} any more: update SECTIONS"
        assert any(c.section == name and c.code.startswith("curl") for c in COMMANDS), (
            f"no curl example in {name}"
        )


def test_every_substitution_is_still_needed() -> None:
    words = [w for c in COMMANDS for w in shlex.split(c.code, comments=True)]
    text = "\n".join([*(c.code for c in COMMANDS), *COMMENTS])
    for sub in SUBSTITUTIONS:
        needed = sub.find in words if isinstance(sub.replace, tuple) else sub.find in text
        assert needed, f"SUBSTITUTIONS: {sub.find!r} no longer occurs in the README's examples: remove it"


@live
@pytest.mark.parametrize("n", range(len(COMMANDS)), ids=[c.id for c in COMMANDS])
def test_readme_example(readme_run: ReadmeRun, n: int) -> None:
    check(readme_run.result(n))


@live
def test_every_classify_answer_has_the_readme_answers_keys(readme_run: ReadmeRun) -> None:
    """Every key of the README's abridged classify answer, nested keys too, is in every zero-shot answer."""
    promised = readme_classify_answer()
    answers = [
        r
        for r in readme_run.all()
        if r.call.path == "/v1/classify" and "classifier" not in r.call.params() and r.status == 200
    ]
    assert answers, "no zero-shot classify example answered"
    for r in answers:
        absent = missing_keys(promised, r.answer)
        assert not absent, (
            f"{absent}: in the README's example classify answer, not in the answer\n{r.describe()}"
        )


def api_key_words() -> list[str]:
    """The words the block's comment says to add to every /v1 call when API keys are set."""
    pattern = re.compile(r"KEEPFIT_API_KEYS set, add (.+?) to every /v1 call")
    said = [m.group(1) for c in COMMENTS if (m := pattern.search(c))]
    assert said, (
        "the README's examples no longer say how to call /v1 with API keys (the comment 'with KEEPFIT_API_KEYS "
        "set, add -H ... to every /v1 call'): update test_with_api_keys_add_the_header_to_every_v1_call"
    )
    return substitute(shlex.split(said[0]), "")


@live
def test_with_api_keys_add_the_header_to_every_v1_call(
    index_dir: Path, default_artifact: Path, uploads: dict[str, Path], tmp_path: Path
) -> None:
    """On a server with API keys, every example works with the comment's header added to its /v1 calls (and
    without the header a /v1 call is refused)."""
    require_curl()
    extra = tuple(api_key_words())
    env = {
        "KEEPFIT_API_KEYS": API_KEY,
        "KEEPFIT_ADMIN_KEYS": ADMIN_KEY,
        "KEEPFIT_CLASSIFIERS": str(tmp_path / "classifiers"),
    }
    with running_service(default_artifact, index_dir, tmp_path / "serve.log", env) as service:
        assert httpx.get(f"{service.base}/v1/categories", timeout=30).status_code == 401
        run = ReadmeRun(service, uploads, tmp_path / "commands", v1_extra=extra)
        failures = []
        for r in run.all():
            try:
                check(r)
            except AssertionError as err:
                failures.append(str(err))
    assert not failures, "\n\n".join(failures)
