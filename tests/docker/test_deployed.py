"""Checks of a running deployment (``docker compose up`` by ``docker/stack.py``), through its published port.

Run by ``test_compose_smoke.py`` as the command of ``docker/stack.py``, which sets ``KEEPFIT_URL`` after
``up --wait`` and after the ``index`` profile has indexed the generated images it was given (and a few real images):
    python docker/stack.py --images DIR -- python -m pytest tests/docker/test_deployed.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import make_golden_fundus
from tests.service.helpers import encode

SEARCH_WAIT_S = 60  # the API checks for a rebuilt index every few seconds


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=os.environ["KEEPFIT_URL"], timeout=120) as client:
        yield client


def test_ready_with_the_compose_redis_as_its_cache(api: httpx.Client) -> None:
    r = api.get("/readyz")
    assert r.status_code == 200, r.text
    cache = r.json()["cache"]
    assert (cache["backend"], cache["state"]) == ("redis", "ok"), cache


def test_the_api_sizes_its_threads_by_the_containers_cpu_quota(api: httpx.Client) -> None:
    """compose ``cpus:`` (KEEPFIT_API_CPUS) is a CFS quota inside the container, where os.cpu_count() still
    counts the host's cores: the API must see the quota and size its model runs and threads for it."""
    compute = api.get("/readyz").json()["compute"]
    cpus = os.environ.get("KEEPFIT_API_CPUS")
    if not cpus:
        assert compute["cpu_quota"] is None, compute
        return
    quota = float(cpus)
    assert compute["cpu_quota"] == pytest.approx(quota), compute
    assert compute["cores"] == max(1, int(quota)), compute
    assert (compute["model_runs"] - 1) * compute["onnx_threads"] <= compute["cores"], compute


def test_the_same_image_twice_is_computed_then_served_from_redis_unchanged(api: httpx.Client) -> None:
    image = encode(make_golden_fundus(size=256, seed=1234), "PNG")
    answers = []
    for _ in range(2):
        r = api.post("/v1/classify", files={"image": ("eye.png", image, "image/png")},
                     data={"modality": "CFP", "top_k": "3"})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    first, second = answers
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["predictions"] == second["predictions"]
    probabilities = [p["probability"] for p in first["predictions"]]
    assert len(probabilities) == 3 and all(0.0 <= p <= 1.0 for p in probabilities)
    assert probabilities == sorted(probabilities, reverse=True)


def test_text_search_finds_the_index_built_by_the_compose_profile_and_serves_its_images(api: httpx.Client) -> None:
    deadline = time.monotonic() + SEARCH_WAIT_S
    while True:  # 503 until the API notices the new index
        r = api.post("/v1/search", json={"query": "optic disc of a fundus photograph", "top_k": 3})
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits, r.json()
    image = api.get(hits[0]["image_url"])
    assert image.status_code == 200, image.text[:200]
    assert image.headers["content-type"].startswith("image/") and image.content


def _docker(*args: str) -> str:
    client = "/usr/bin/docker" if os.path.isfile("/usr/bin/docker") else shutil.which("docker") or "docker"
    out = subprocess.run([client, *args], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_api_container_runs_read_only_under_an_init_with_rotated_logs() -> None:
    """What the compose file asks for, as the engine applied it: an init as PID 1 (it forwards SIGTERM and reaps
    children), logs that rotate rather than fill the disk, a read-only root without capabilities."""
    project = os.environ.get("COMPOSE_PROJECT_NAME")
    if not project or not os.environ.get("DOCKER_HOST"):
        pytest.skip("needs the engine and project of the deployment (docker/stack.py sets DOCKER_HOST and "
                    "COMPOSE_PROJECT_NAME)")
    ids = _docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                  "--filter", "label=com.docker.compose.service=api").split()
    assert len(ids) == 1, ids
    host = json.loads(_docker("inspect", ids[0]))[0]["HostConfig"]
    assert host["Init"] is True
    assert host["LogConfig"]["Type"] == "json-file"
    assert host["LogConfig"]["Config"] == {"max-size": "20m", "max-file": "5"}
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert _docker("exec", ids[0], "cat", "/proc/1/comm").strip() in {"docker-init", "tini"}


def test_an_image_is_erased_from_the_running_deployment_as_the_readme_shows(api: httpx.Client) -> None:
    """`docker compose exec api keepfit index remove ...` and `... classifier forget ...` (README: "Erasing a
    patient's images"): the API's container (read-only, without capabilities) can change its index volume, and
    the running API stops serving the image. Last in this file: it removes an image the searches above found."""
    project = os.environ.get("COMPOSE_PROJECT_NAME")
    if not project or not os.environ.get("DOCKER_HOST"):
        pytest.skip("needs the engine and project of the deployment (docker/stack.py sets DOCKER_HOST and "
                    "COMPOSE_PROJECT_NAME)")
    (container,) = _docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                           "--filter", "label=com.docker.compose.service=api").split()
    r = api.post("/v1/search", json={"query": "optic disc of a fundus photograph", "top_k": 1})
    assert r.status_code == 200, r.text
    (hit,) = r.json()["hits"]
    assert api.get(hit["image_url"]).status_code == 200
    removed = json.loads(_docker("exec", container, "keepfit", "index", "remove", "--index",
                                 "/indexes/default",
                                 "--id", str(hit["id"]), "--json"))
    assert removed["removed"] == 1 and removed["removed_sha256"] == [hit["sha256"]]
    forgot = _docker("exec", container, "keepfit", "classifier", "forget", "--sha256", hit["sha256"][:16])
    assert "nothing to forget" in forgot or "as an example" in forgot, forgot
    deadline = time.monotonic() + SEARCH_WAIT_S
    while api.get(hit["image_url"]).status_code != 404 and time.monotonic() < deadline:  # seen within seconds
        time.sleep(1.0)
    assert api.get(hit["image_url"]).status_code == 404
