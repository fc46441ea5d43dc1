"""The compose file bounds the memory of every service (a worst-case upload cannot take the host down)."""

from __future__ import annotations

from pathlib import Path

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
