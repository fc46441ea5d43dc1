"""The compose file bounds the memory of every service (a worst-case upload cannot take the host down)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _mib(value: str) -> float:
    units = {"k": 1 / 1024, "m": 1.0, "g": 1024.0}
    value = value.strip().lower().rstrip("b")
    return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value) / 2**20


def _default(expr: str) -> str:
    """``${NAME:-default}`` -> ``default`` (what compose uses when the variable is unset)."""
    assert expr.startswith("${") and ":-" in expr, expr
    return expr[expr.index(":-") + 2 : -1]


def test_every_service_has_a_memory_limit_above_its_measured_peak() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    limits = {name: _mib(_default(str(spec["mem_limit"]))) for name, spec in services.items()}
    assert set(limits) == {"api", "redis", "index"}
    # one API worker peaks under 1 GiB with 8 worst-case uploads at once (service/benchmarks/worst_case_memory.py)
    assert 1024 < limits["api"] <= 2048
    # Redis: its maxmemory plus room for its own overhead
    redis_max = _mib(_default(services["redis"]["command"][services["redis"]["command"].index("--maxmemory") + 1]))
    assert redis_max < limits["redis"] <= 2 * redis_max
    assert limits["index"] >= 1024
    for name in ("api", "index"):
        assert services[name]["environment"]["MALLOC_ARENA_MAX"] == "2"


def test_the_apis_settings_are_settings_with_the_services_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KEEPFIT_ variable in the API's environment is a setting, and where compose gives it a default, it means
    the service's own: the deployment behaves as the README's settings table says unless an operator changes it
    (the exceptions, on purpose: the index is optional until the index profile has built it, and the cache is the
    compose file's own Redis unless .env names another)."""
    from service.settings import Settings

    for variable in [v for v in os.environ if v.startswith("KEEPFIT_")]:
        monkeypatch.delenv(variable)
    environment = yaml.safe_load(COMPOSE.read_text())["services"]["api"]["environment"]
    own = Settings(_env_file=None)  # type: ignore[call-arg]
    checked = 0
    for variable, expr in environment.items():
        if not variable.startswith("KEEPFIT_"):
            continue
        name = variable.removeprefix("KEEPFIT_").lower()
        assert name in Settings.model_fields, f"{variable} is not a setting"
        expr = str(expr)
        if not expr.startswith("${") or expr.endswith(":-}") or name in ("index_optional", "redis_url"):
            continue  # set by the deployment itself, empty (the service's default), or the exceptions above
        monkeypatch.setenv(variable, _default(expr))
        assert getattr(Settings(_env_file=None), name) == getattr(own, name), variable  # type: ignore[call-arg]
        monkeypatch.delenv(variable)
        checked += 1
    assert checked >= 12
    for variable in ("KEEPFIT_HEADER_TIMEOUT_S", "KEEPFIT_BODY_TIMEOUT_S", "KEEPFIT_MAX_UPLOAD_BYTES", "KEEPFIT_LOG_FORMAT"):
        assert variable in environment  # the settings the README names for a site reach the container
