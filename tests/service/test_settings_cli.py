"""Settings from the environment, the get_settings override, and ``keepfit serve``'s flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from model.cli import main as keepfit
from service import cli
from service.app import create_app
from service.settings import Settings, find_index, get_settings
from tests.service.helpers import make_settings


def test_environment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPFIT_API_KEYS", " one, two ,")
    monkeypatch.setenv("KEEPFIT_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("KEEPFIT_PROVIDERS", "cuda, cpu")
    monkeypatch.setenv("KEEPFIT_INDEX", "")  # compose passes unset variables as empty strings
    monkeypatch.setenv("KEEPFIT_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("KEEPFIT_MAX_TOP_K", "7")
    monkeypatch.setenv("KEEPFIT_THREADS", "")
    monkeypatch.setenv("KEEPFIT_INFERENCE_CONCURRENCY", "")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.threads is None and s.inference_concurrency == 0 and s.concurrency >= 2  # empty: automatic
    assert s.api_keys == ["one", "two"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.index is None and s.redis_url == "redis://redis:6379/0" and s.max_top_k == 7
    assert s.artifact == Path("artifacts/keepfit-v2-small")


def test_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPFIT_MAX_TOP_K", "0")
    with pytest.raises(ValueError, match="max_top_k"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("KEEPFIT_REDIS_URL", "localhost:6379", "redis_url must start with redis://"),
        ("KEEPFIT_CORS_ORIGINS", "localhost:3000", r"cors_origins are scheme://host\[:port\]"),
        ("KEEPFIT_CORS_ORIGINS", "https://clinic.example/app", "without a path"),
        ("KEEPFIT_PUBLIC_URL", "not-a-url", "public_url must be an http:// or https:// URL"),
        ("KEEPFIT_PROVIDERS", "cpux", "unknown ONNX Runtime provider 'cpux'"),  # served on the CPU, silently
    ],
)
def test_values_that_could_never_work_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    """They were accepted: the Redis URL failed inside the app's start-up in a 77-line traceback, the origin
    refused every preflight, the public URL made broken image links."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=words):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_get_settings_override_applies_to_the_whole_app(default_artifact: Path) -> None:
    app = create_app(make_settings(default_artifact))
    app.dependency_overrides[get_settings] = lambda: make_settings(
        default_artifact, max_top_k=3, api_keys=["k"]
    )
    with TestClient(app) as client:
        assert client.post("/v1/embed", json={"text": "x"}).status_code == 401
        r = client.post("/v1/search", json={"query": "x", "top_k": 4}, headers={"X-API-Key": "k"})
        assert r.status_code == 422 and "the limit is 3" in r.json()["error"]["message"]


def test_serve_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, default_artifact: Path, tmp_path: Path
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("KEEPFIT_PORT", "9999")
    monkeypatch.setenv("KEEPFIT_HOST", "0.0.0.0")
    monkeypatch.delenv("KEEPFIT_INDEX", raising=False)
    monkeypatch.chdir(tmp_path)  # no indexes/ here to find
    get_settings.cache_clear()
    try:
        assert (
            cli.main(["--artifact", str(default_artifact), "--port", "8123", "--redis-url", "redis://r:1/0"])
            == 0
        )
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    app, kwargs = calls[0]
    assert kwargs["port"] == 8123 and kwargs["host"] == "0.0.0.0"  # flag beats env; env beats default
    assert kwargs["timeout_graceful_shutdown"] == 8.0  # in-flight requests get that long on SIGTERM
    assert settings.redis_url == "redis://r:1/0" and settings.artifact == default_artifact
    assert app.state.settings.port == 8123


def test_a_misspelt_setting_stops_serve_and_an_unknown_one_is_named(
    monkeypatch: pytest.MonkeyPatch, default_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """KEEPFIT_API_KEY (for KEEPFIT_API_KEYS) served every request without a key, and said nothing."""
    from model.errors import ConfigError
    from service.settings import unknown_variables

    assert unknown_variables({"KEEPFIT_API_KEY": "k", "KEEPFIT_IMAGES": "/srv", "KEEPFIT_FOO": "1", "PATH": "/"}) == [
        ("KEEPFIT_API_KEY", "KEEPFIT_API_KEYS"), ("KEEPFIT_FOO", None)]  # compose's own variables are not settings
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("KEEPFIT_API_KEY", "secret")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="KEEPFIT_API_KEY is not a setting; did you mean KEEPFIT_API_KEYS"):
            cli.main(["--artifact", str(default_artifact)])
        assert calls == []
        monkeypatch.delenv("KEEPFIT_API_KEY")
        monkeypatch.setenv("KEEPFIT_SOMETHING_ELSE", "1")
        assert cli.main(["--artifact", str(default_artifact)]) == 0
    finally:
        get_settings.cache_clear()
    assert "KEEPFIT_SOMETHING_ELSE is not a KEEPFIT setting and is ignored" in caplog.text
    # uvicorn's own lines (the access log too) come in the format of every other line
    config = calls[0][1]["log_config"]
    assert config["formatters"]["keepfit"] == {"()": "model.logs.formatter", "name": "text"}
    assert config["handlers"]["stderr"]["formatter"] == "keepfit"
    assert config["loggers"]["uvicorn.access"]["handlers"] == ["stderr"]


def test_serve_with_workers_uses_the_factory(monkeypatch: pytest.MonkeyPatch, default_artifact: Path) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append((app, kw)))
    get_settings.cache_clear()
    try:
        assert cli.main(["--artifact", str(default_artifact), "--workers", "3"]) == 0
    finally:
        get_settings.cache_clear()
    assert calls[0][0] == "service.cli:worker_app" and calls[0][1]["factory"] is True
    assert calls[0][1]["workers"] == 3


def test_serve_finds_an_index_by_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_index(Path("artifacts/keepfit-v2-small")) is None
    (tmp_path / "indexes" / "default").mkdir(parents=True)
    (tmp_path / "indexes" / "default" / "index_manifest.json").write_text("{}")
    assert find_index(Path("artifacts/keepfit-v2-small")) == Path("indexes/default")
    (tmp_path / "indexes" / "keepfit-v2-small").mkdir()
    (tmp_path / "indexes" / "keepfit-v2-small" / "index_manifest.json").write_text("{}")
    assert find_index(Path("artifacts/keepfit-v2-small")) == Path("indexes/keepfit-v2-small")


def test_serve_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    get_settings.cache_clear()
    try:
        assert keepfit(["serve", "--artifact", str(tmp_path / "nope")]) == 2
        assert "error: no artifact at" in capsys.readouterr().err
        assert keepfit(["serve", "--artifact", str(tmp_path), "--port", "0"]) == 2
        # the flag the user typed is named, not the variable it is passed through
        assert "error: bad settings: --port: Input should be greater than or equal to 1" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_serve_log_flags_beat_a_bad_environment_and_warn_is_a_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, default_artifact: Path
) -> None:
    """A bad KEEPFIT_LOG_FORMAT stopped `keepfit serve --log-format text`, which overrides it; KEEPFIT_LOG_LEVEL=warn
    worked for every command but serve."""
    assert make_settings(default_artifact, log_level="warn").log_level == "WARNING"
    assert make_settings(default_artifact, log_level="fatal").log_level == "CRITICAL"
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "xml")
    get_settings.cache_clear()
    try:
        assert keepfit(["serve", "--log-format", "text", "--artifact", str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err
        assert "no artifact at" in err and "log format" not in err, err  # it got as far as the artifact
        monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "xml")  # serve passes its flags on through the environment
        assert keepfit(["serve", "--log-format=text", "--artifact", str(tmp_path / "nope")]) == 2
        assert "no artifact at" in capsys.readouterr().err
        monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "xml")  # serve passes its flags on through the environment
        assert keepfit(["serve", "--artifact", str(tmp_path / "nope")]) == 2  # without the flag: the env's error
        assert "unknown log format 'xml' (KEEPFIT_LOG_FORMAT)" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("cores", "workers", "cores_each", "runs", "threads"),
    [
        # (cores the process may use, workers) -> each worker's cores, model runs at once, ONNX threads per run
        (1, 1, 1, 2, 1),  # a 1-CPU container: one run on the core, one waiting (not two on one core)
        (2, 1, 2, 3, 1),  # this machine: the measured default (README, "Workers and threads")
        (2, 2, 1, 2, 1),  # two workers on 2 cores: 2 x 2 x 1, the best measured there
        (8, 1, 8, 5, 2),
        (8, 2, 4, 3, 2),
        (32, 4, 8, 5, 2),
        (3, 4, 1, 2, 1),  # more workers than cores: each still gets one
    ],
)
def test_defaults_share_the_available_cores_among_workers_and_runs(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, cores_each: int, runs: int, threads: int
) -> None:
    from service.settings import Settings

    monkeypatch.setattr("service.settings.available_cores", lambda: cores)
    s = Settings(workers=workers)
    assert (s.cores, s.concurrency, s.intra_op_threads) == (cores_each, runs, threads)
    # the runs sharing the cores never hold more ONNX threads than the worker has cores
    assert (runs - 1) * threads <= cores_each


def test_onnx_threads_share_the_cores_among_concurrent_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    monkeypatch.setattr("service.settings.available_cores", lambda: 8)
    assert Settings(inference_concurrency=2).intra_op_threads == 4
    assert Settings(inference_concurrency=32).intra_op_threads == 1
    assert Settings(threads=3, inference_concurrency=2).intra_op_threads == 3
    assert Settings(threads=3).concurrency == 5  # the threads setting leaves the runs alone


def test_serve_warns_of_guessable_keys_and_of_a_read_key_that_is_also_an_admin_key(
    monkeypatch: pytest.MonkeyPatch, default_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing said that a 6-letter key is guessable, or that a key in both lists lets every reader change the
    classifiers; the keys themselves never reach the log."""
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    strong, admin = "k" * 24, "a" * 24
    for variable, value in (("KEEPFIT_API_KEYS", f"{strong},secret,{admin}"), ("KEEPFIT_ADMIN_KEYS", admin)):
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        assert cli.main(["--artifact", str(default_artifact)]) == 0
    finally:
        get_settings.cache_clear()
    assert "KEEPFIT_API_KEYS: key 2 of 3 is shorter than 16 characters" in caplog.text
    assert "KEEPFIT_ADMIN_KEYS: key" not in caplog.text
    assert "1 key(s) of KEEPFIT_ADMIN_KEYS are also in KEEPFIT_API_KEYS" in caplog.text
    assert "secret" not in caplog.text.replace("secrets", "") and admin not in caplog.text and strong not in caplog.text
    caplog.clear()
    monkeypatch.setenv("KEEPFIT_API_KEYS", strong)
    get_settings.cache_clear()
    try:
        assert cli.main(["--artifact", str(default_artifact)]) == 0
    finally:
        get_settings.cache_clear()
    assert "shorter than" not in caplog.text
    assert "also in KEEPFIT_API_KEYS" not in caplog.text
