"""A Python client generated from ``/openapi.json`` with ``openapi-python-client`` works against a live service,
as a clinic's software team would use it: generated from the deployment it talks to (API and admin keys, an
index), with the README's one configuration line for image answers and its one-line fix of the generator's
missing import, then used for every kind of call: classify (default set, named categories, heat maps, an error
parsed as ``ErrorResponse``), search by text and by image, an indexed image's bytes, embed, and a classifier
created from uploaded examples, used and deleted.

The README's advice is checked as written: :data:`GENERATOR_CONFIG` and :func:`patch_missing_unset` are what it
tells a reader to do (a test below compares them with its text)."""

from __future__ import annotations

import importlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image

from service.settings import Settings
from tests.service.helpers import make_settings
from tests.service.servers import live_server

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]

ROOT = Path(__file__).resolve().parents[2]
API_KEY, ADMIN_KEY = "k-client", "a-client"
PACKAGE = "keepfit_client"

# The generator's configuration the README gives: image answers are bytes (it knows only octet-stream as such)
GENERATOR_CONFIG = """content_type_overrides:
  image/jpeg: application/octet-stream
  image/png: application/octet-stream
  image/tiff: application/octet-stream
  image/bmp: application/octet-stream
  image/webp: application/octet-stream
"""


def patch_missing_unset(package: Path) -> list[str]:
    """openapi-python-client (0.29 and earlier, its issue #1451) annotates an operation with two body types
    (JSON or a form: search, searchUnversioned, embed, createClassifier) with ``| Unset`` without importing
    ``Unset``: add it to the module's ``from ...types import`` line (its names are sorted only where ruff is
    installed) where a module uses it.  Returns the modules changed (none once the generator is fixed)."""
    changed = []
    for module in sorted(package.rglob("*.py")):
        text = module.read_text()
        if re.search(r"\bUnset\b", text) and not re.search(r"^from \S*types import .*\bUnset\b", text, re.M):
            # (types.py, which defines Unset, has no such line: nothing to change there)
            text, fixed = re.subn(r"^(from \.+types import )(.*)$", r"\1\2, Unset", text, count=1, flags=re.M)
            if fixed:
                module.write_text(text)
                changed.append(module.relative_to(package).as_posix())
    return changed


def _generator() -> str:
    found = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    if found is None:
        message = "openapi-python-client is not installed (the test extra installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def settings(index_dir: Path, default_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    store = tmp_path_factory.mktemp("client-classifiers")
    return make_settings(default_artifact, index=index_dir, api_keys=[API_KEY], admin_keys=[ADMIN_KEY],
                         classifiers=store)


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[str]:
    with live_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def generated(service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, list[str]]]:
    """The client generated from the running deployment's schema, importable as ``keepfit_client``, and the
    modules :func:`patch_missing_unset` changed."""
    generator = _generator()
    work = tmp_path_factory.mktemp("generated-client")
    (work / "openapi.json").write_bytes(httpx.get(f"{service}/openapi.json", timeout=30).content)
    (work / "config.yml").write_text(GENERATOR_CONFIG)
    done = subprocess.run(
        [generator, "generate", "--path", str(work / "openapi.json"), "--config", str(work / "config.yml"),
         "--output-path", str(work / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=300, cwd=work,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # nothing of the schema is left out of the client (an unsupported answer type is dropped with a warning)
    assert "Warning" not in done.stdout, done.stdout[-3000:]
    changed = patch_missing_unset(work / PACKAGE)
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module(PACKAGE), changed
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def client_package(generated: tuple[ModuleType, list[str]]) -> ModuleType:
    return generated[0]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def _client(package: ModuleType, base: str, admin: bool = False) -> Any:
    headers = {"X-Admin-Key": ADMIN_KEY} if admin else {}
    return package.AuthenticatedClient(base_url=base, token=API_KEY, prefix="", auth_header_name="X-API-Key",
                                       headers=headers, timeout=httpx.Timeout(60.0))


def _file(data: bytes, name: str = "eye.jpg") -> Any:
    from keepfit_client.types import File

    return File(payload=io.BytesIO(data), file_name=name, mime_type="image/jpeg")


def test_a_generated_client_classifies_searches_embeds_and_fetches_images(
    client_package: ModuleType, service: str, real_images: dict[str, bytes]
) -> None:
    from keepfit_client.models import (
        ClassifyForm,
        EmbedForm,
        EmbedTextRequest,
        ErrorResponse,
        SearchForm,
        SearchRequest,
    )

    client = _client(client_package, service)
    health = _api("health.healthz").sync_detailed(client=client)
    assert health.status_code == 200
    ready = _api("health.readyz").sync(client=client)
    assert ready.status.value == "ready" and ready.index.loaded

    classify = _api("classify.classify")
    answer = classify.sync(client=client, body=ClassifyForm(image=_file(real_images["CFP"])))
    assert answer.modality.used == "CFP" and answer.decision.value == "screening"
    assert answer.predictions and answer.predictions == sorted(answer.predictions, key=lambda p: -p.probability)
    named = classify.sync(client=client, body=ClassifyForm(
        image=_file(real_images["CFP"]), categories=["normal", "diabetic retinopathy"], top_k=1, explain=True))
    assert [p.label for p in named.predictions][0] in ("normal", "diabetic retinopathy")
    assert len(named.predictions) == 1 and named.explanations and named.explanations[0].heatmap.png
    refused = classify.sync_detailed(client=client, body=ClassifyForm(image=_file(b"not an image")))
    assert refused.status_code == 400 and isinstance(refused.parsed, ErrorResponse)
    assert refused.parsed.error.code and refused.parsed.error.message and refused.parsed.error.request_id

    search = _api("search.search")
    by_text = search.sync(client=client, body=SearchRequest(query="hard exudates near the macula",
                                                                        top_k=3))
    assert len(by_text.hits) == 3 and by_text.score_scale.metric == "cosine"
    by_image = search.sync(client=client, body=SearchForm(image=_file(real_images["CFP"]), top_k=2))
    assert len(by_image.hits) == 2

    hit = by_text.hits[0]
    image = _api("images.get_image").sync(client=client, image_id=hit.id, size=64)
    assert max(Image.open(image.payload).size) == 64  # the bytes, not dropped by the generator
    original = _api("images.get_image").sync_detailed(client=client, image_id=hit.id)
    assert original.status_code == 200 and original.content == httpx.get(
        f"{service}/v1/images/{hit.id}", headers={"X-API-Key": API_KEY}, timeout=30).content

    embed = _api("embed.embed")
    text = embed.sync(client=client, body=EmbedTextRequest(text="optic disc cupping"))
    vector = embed.sync(client=client, body=EmbedForm(image=_file(real_images["CFP"])))
    assert len(text.embedding) == len(vector.embedding) == text.dim

    keyless = client_package.Client(base_url=service)
    assert _api("classify.classify").sync_detailed(
        client=keyless, body=ClassifyForm(image=_file(real_images["CFP"]))).status_code == 401


def test_a_generated_client_creates_uses_and_deletes_a_classifier(
    client_package: ModuleType, service: str, real_image_paths: dict[str, list[Path]]
) -> None:
    from keepfit_client.models import ClassifyForm, CreateClassifierForm, FitMethod, Modality

    admin = _client(client_package, service, admin=True)
    cfp = real_image_paths["CFP"]
    examples = [_file(p.read_bytes(), p.name) for p in cfp[:4]]  # the form generated clients send
    labels = ["first pair", "first pair", "second pair", "second pair"]
    body = CreateClassifierForm(name="kind", modality=Modality("CFP"), method=FitMethod("prototype"),
                                text_prior=False, examples=examples, labels=labels)
    created = _api("classifiers.create_classifier").sync_detailed(client=admin, body=body)
    assert created.status_code == 201, created.content
    assert created.parsed.name == "kind" and created.parsed.examples == 4
    listed = _api("classifiers.list_classifiers").sync(client=admin)
    assert [c.name for c in listed.classifiers] == ["kind"]
    answer = _api("classify.classify").sync(client=_client(client_package, service), body=ClassifyForm(
        image=_file(cfp[0].read_bytes()), classifier="kind"))
    assert answer.classifier.name == "kind" and answer.classifier.version == created.parsed.version
    assert {p.label for p in answer.predictions} == {"first pair", "second pair"}
    deleted = _api("classifiers.delete_classifier").sync_detailed(client=admin, name="kind")
    assert deleted.status_code == 200
    without_admin = _api("classifiers.delete_classifier").sync_detailed(client=_client(client_package, service),
                                                                         name="kind")
    assert without_admin.status_code in (401, 403)


def test_the_generated_enums_have_names_of_their_own(client_package: ModuleType) -> None:
    """Inline in the schema, the enums were named by where the generator met them, a nullable field's with a
    number (``SearchRequestModalityType0``, ``ClassifyResponseDecisionType0``, ``RefitRequestMethodType0``), and
    one set of values had a class for each field that took it (``ClassifyFormModality``,
    ``CreateClassifierFormModality``...)."""
    import enum

    models = importlib.import_module(f"{PACKAGE}.models")
    enums = {name for name in dir(models) if isinstance(getattr(models, name), enum.EnumMeta)}
    assert {"Modality", "SearchModality", "TaskName", "Decision", "DecisionChoice", "FitMethod"} <= enums, enums
    numbered = sorted(name for name in enums if re.search(r"Type\d+$|\d$", name))
    assert not numbered, numbered
    assert not {"ClassifyFormModality", "CreateClassifierFormModality", "CreateClassifierFormMethod"} & enums


def test_the_readme_gives_the_generator_configuration_and_the_fix_this_test_uses() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for line in GENERATOR_CONFIG.splitlines():
        assert line in readme, f"README.md lacks the generator configuration line {line!r}"
    assert "#1451" in readme and "add `Unset` to the module's `from ...types import` line" in readme
    assert "--config keepfit-client.yml --meta none" in readme  # the flags the fixture generates with


def _readme_fix() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^Up to at least 0\.29 .*?(?=\n\n)", readme, re.S | re.M)
    assert found, "README.md lacks the paragraph of the generator's missing import"
    return found.group(0)


def test_the_readme_names_every_module_the_missing_import_fix_changes(
    generated: tuple[ModuleType, list[str]],
) -> None:
    """The README named search, embed and createClassifier; searchUnversioned (the same two bodies) needed the
    fix too, and its wording (change `from ...types import UNSET, Response`) matched no line where the
    generator ran without ruff (`Response, UNSET`)."""
    fix = _readme_fix()
    changed = generated[1]
    assert changed, "the generator imports Unset now: drop the README's fix"
    assert set(re.findall(r"`(api/[\w/]+\.py)`", fix)) == set(changed)
    for module in changed:  # and each one's operation id: search_unversioned.py is searchUnversioned
        operation = re.sub(r"_(\w)", lambda m: m.group(1).upper(), Path(module).stem)
        assert f"`{operation}`" in fix, operation


def test_the_missing_import_fix_touches_only_what_uses_unset(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "api").mkdir(parents=True)
    (package / "api" / "broken.py").write_text("from ...types import UNSET, Response\n\nx: int | Unset = UNSET\n")
    (package / "api" / "fine.py").write_text("from ...types import UNSET, Response, Unset\n\nx: int | Unset = UNSET\n")
    (package / "api" / "plain.py").write_text("from ...types import UNSET, Response\n\nx = UNSET\n")
    (package / "types.py").write_text("class Unset:\n    pass\n\n\nUNSET: Unset = Unset()\n")  # defines it
    # as the generator writes it without ruff installed: the names unsorted
    (package / "api" / "unsorted.py").write_text("from ...types import Response, UNSET\n\nx: int | Unset = UNSET\n")
    assert patch_missing_unset(package) == ["api/broken.py", "api/unsorted.py"]
    assert (package / "api" / "broken.py").read_text().startswith("from ...types import UNSET, Response, Unset\n")
    assert (package / "api" / "unsorted.py").read_text().startswith("from ...types import Response, UNSET, Unset\n")
