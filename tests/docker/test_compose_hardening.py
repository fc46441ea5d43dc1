"""What an operator gets from the compose files and Dockerfiles, read statically: containers that cannot write to
their image or gain privileges, variables that something reads, and documented commands that work as written."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU_COMPOSE = ROOT / "docker" / "compose.gpu.yml"


def _services(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def test_every_keepfit_variable_of_the_compose_files_is_a_setting_or_known_to_the_service() -> None:
    """`keepfit serve` names an unknown KEEPFIT_* variable in its log (and stops on one a letter from a setting):
    the compose files' own variables, which an operator exports beside the settings, must be known to it."""
    from service.settings import OTHER_VARIABLES, Settings

    settings = {f"KEEPFIT_{name.upper()}" for name in Settings.model_fields}
    used = set(re.findall(r"\$\{(KEEPFIT_[A-Z0-9_]+)", COMPOSE.read_text() + GPU_COMPOSE.read_text()))
    assert "KEEPFIT_STOP_GRACE_PERIOD" in used
    assert sorted(used - settings - OTHER_VARIABLES) == []


def test_the_index_builder_gets_no_variable_or_gpu_it_does_not_use() -> None:
    """`keepfit index build` embeds on the CPU and reads no KEEPFIT_PROVIDERS: the GPU overlay passed it one and
    reserved a GPU for it, both ignored."""
    environment = dict(_services(COMPOSE)["index"].get("environment", {}))
    gpu_index = _services(GPU_COMPOSE).get("index", {})
    environment.update(gpu_index.get("environment", {}))
    # the KEEPFIT_* names the builder's code (index/ and the torch-free model/) mentions at all
    sources = "".join(p.read_text() for folder in ("index", "model") for p in (ROOT / folder).glob("*.py"))
    read = set(re.findall(r"KEEPFIT_[A-Z0-9_]+", sources))
    assert "KEEPFIT_PROVIDERS" not in read
    passed = {name for name in environment if name.startswith("KEEPFIT_")}
    assert passed and sorted(passed - read) == []
    assert "deploy" not in gpu_index


def test_the_api_and_the_index_builder_run_read_only_without_capabilities() -> None:
    """Indexes and classifiers live in the `indexes` volume; nothing else is written at run time, so the image
    itself is read-only, with a /tmp of its own, no Linux capabilities and no privilege gain (setuid)."""
    services = _services(COMPOSE)
    for name in ("api", "index"):
        spec = services[name]
        assert spec.get("read_only") is True, name
        assert spec.get("tmpfs") == ["/tmp"], name
        assert spec.get("cap_drop") == ["ALL"] and not spec.get("cap_add"), name
        assert "no-new-privileges:true" in spec.get("security_opt", []), name
        assert any(str(v).startswith("indexes:/indexes") and not str(v).endswith(":ro") for v in spec["volumes"])


def test_the_training_images_documented_run_can_write_its_runs_folder() -> None:
    """A bind-mounted host folder keeps its host owner: the image's user (uid 10001) could not write to runs/, so
    the documented `docker run` that mounts it runs as the caller."""
    text = (ROOT / "docker" / "training.Dockerfile").read_text()
    example = re.search(r"^#\s+docker run (.*?)(?=^#\s*$)", text, flags=re.M | re.S)
    assert example is not None
    command = example.group(1)
    assert ':/runs"' in command and "USER keepfit" in text
    assert '--user "$(id -u):$(id -g)"' in command


def test_every_image_that_runs_onnxruntime_turns_its_telemetry_off() -> None:
    """ONNX Runtime's Linux builds send usage events to Microsoft by default and keep a device id in the home; in
    a container without a way out, the upload held the API's exit past docker's 10 s (SIGKILL, measured with
    docker/stack.py: 6-10 s after the model had run, 0.8 s with it off)."""
    for name in ("service.Dockerfile", "service-gpu.Dockerfile", "training.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        instructions = re.sub(r"\\\n\s*", " ", text).splitlines()
        env = " ".join(line for line in instructions if line.startswith("ENV "))
        assert re.search(r"\bORT_DISABLE_TELEMETRY=1\b", env), name


def test_every_service_rotates_its_logs_and_the_keepfit_ones_run_under_an_init() -> None:
    """Docker's default json-file log grows without bound (an access line per request at INFO); the API and the
    index builder get an init as PID 1, which forwards SIGTERM and reaps exited children."""
    services = _services(COMPOSE)
    for name, spec in services.items():
        logging = spec.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert {"max-size", "max-file"} <= set(logging.get("options", {})), name
    assert services["api"].get("init") is True and services["index"].get("init") is True
