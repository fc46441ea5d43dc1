"""Service settings: one pydantic-settings class read from ``KEEPFIT_*`` environment variables.

:func:`get_settings` (cached) is what ``create_app()`` uses by default; tests pass their own instance to
``create_app`` or set ``app.dependency_overrides[get_settings]`` before the app starts.  List settings accept
comma-separated values (``KEEPFIT_API_KEYS=a,b``) because that is what people type in a compose file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from index.query import LOW_SIMILARITY
from model.cores import available_cores
from model.preprocess import DEFAULT_MIN_IMAGE_SIDE

# Short names people write for ONNX Runtime providers.
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}

CommaList = Annotated[list[str], NoDecode]


def _split(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service reads from its environment (``KEEPFIT_`` + the upper-case field name)."""

    model_config = SettingsConfigDict(env_prefix="KEEPFIT_", extra="ignore", frozen=True)

    artifact: Path = Field(default=Path("artifacts/keepfit-v2-small"), description="model artifact directory")
    index: Path | None = Field(
        default=None, description="index directory; none or missing: search answers 503"
    )
    index_optional: bool = Field(
        default=False,
        description="true: a configured index that is missing or fails to load does not fail /readyz "
        "(for deployments that build the index after the API starts)",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for the response cache; unset: in-process LRU"
    )
    cache_ttl_s: int = Field(default=3600, ge=1, le=30 * 86400, description="lifetime of a cached response")
    cache_max_entries: int = Field(default=10_000, ge=0, description="in-process cache size (0 disables it)")
    cache_max_bytes: int = Field(
        default=128 * 1024 * 1024, ge=0, description="in-process cache size in bytes of stored answers (0 disables it)"
    )
    cache_timeout_ms: float = Field(default=100.0, gt=0, le=10_000, description="Redis per-operation timeout")
    cache_retry_s: float = Field(
        default=2.0, ge=0, le=600, description="after a Redis failure, skip it this long"
    )
    api_keys: CommaList = Field(default_factory=list, description="accepted X-API-Key values; empty: no auth")
    cors_origins: CommaList = Field(default_factory=list, description="origins allowed by CORS ('*' for any)")
    admin_keys: CommaList = Field(
        default_factory=list, description="accepted X-Admin-Key values for changing classifiers"
    )
    classifiers: Path | None = Field(
        default=None, description="classifier store directory (default: beside the index, else ./classifiers)"
    )
    max_classifier_examples: int = Field(
        default=500, ge=2, le=100_000, description="most examples in one classifier request"
    )
    max_classifiers: int = Field(default=100, ge=1, le=100_000, description="most classifiers per deployment")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="largest accepted upload")
    body_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="time allowed to receive a request body (then 408)"
    )
    header_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="time allowed to receive a request's headers, and for a new connection to send them (then 408)",
    )
    shutdown_grace_s: float = Field(
        default=8.0,
        gt=0,
        le=600,
        description="on SIGTERM, time the requests in flight get to finish (then closed); under Docker's 10 s",
    )
    upload_budget_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="request bodies in flight at once, in bytes (then 503); default 8 x max_upload_bytes",
    )
    min_image_side: int = Field(
        default=DEFAULT_MIN_IMAGE_SIDE, ge=1, le=4096, description="smallest accepted image width and height in pixels"
    )
    protect_metrics: bool = Field(
        default=False, description="with API keys: /metrics needs a key too (else it stays public)"
    )
    max_pixels: int = Field(default=36_000_000, ge=1, description="largest accepted image (width x height)")
    max_categories: int = Field(
        default=50, ge=2, le=1000, description="most categories in one classify request"
    )
    max_top_k: int = Field(default=100, ge=1, le=10_000, description="largest top_k for classify and search")
    max_query_chars: int = Field(default=1000, ge=1, le=100_000, description="longest text query")
    providers: CommaList = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers, in order",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="ONNX Runtime intra-op threads per model run (default: the worker's cores / the runs sharing them)",
    )
    inference_concurrency: int = Field(
        default=0,
        ge=0,
        le=256,
        description="model runs at once per process (0: one per two of the worker's cores, 2 to one per core, plus one)",
    )
    large_image_pixels: int = Field(
        default=12_000_000,
        ge=1,
        description="images with more pixels than this (by their header) decode one at a time, in their own lane",
    )
    early_decode: bool = Field(
        default=True,
        description="decode a JPEG upload while it arrives when a CPU core is idle (answers sooner after the upload)",
    )
    ort_spinning: bool = Field(
        default=False,
        description="let idle ONNX Runtime threads spin (lower latency on idle cores, less for the rest)",
    )
    low_similarity_text: float = Field(
        default=LOW_SIMILARITY["text"],
        ge=-1.0,
        le=1.0,
        description="a text search whose best score is below this is flagged low_similarity",
    )
    low_similarity_category: float = Field(
        default=LOW_SIMILARITY["category"],
        ge=-1.0,
        le=1.0,
        description="a text search for a known category (by its descriptions) whose best score is below this is "
        "flagged low_similarity",
    )
    low_similarity_image: float = Field(
        default=LOW_SIMILARITY["image"],
        ge=-1.0,
        le=1.0,
        description="an image search whose best score is below this is flagged low_similarity",
    )
    log_level: str = Field(default="INFO", description="Python logging level")
    log_format: str = Field(
        default="text",
        description="log lines as text, or json: one object per line with time, level, logger, message, request_id",
    )
    public_url: str | None = Field(
        default=None, description="where clients reach the service: base of image_url in search results, /openapi.json servers"
    )
    image_url_ttl_s: int = Field(
        default=86_400,
        ge=60,
        le=30 * 86_400,
        description="how long the per-image token of a search hit's image_url opens the image (rounded up to a "
        "multiple of a 24th of it, so the same search gives the same URLs for that long)",
    )
    auth_failure_limit: int = Field(
        default=30,
        ge=0,
        le=1000,
        description="failed authentications (a missing or wrong key) from one client address "
        "within auth_failure_window_s after which its requests get 429 without a key check (0: no limit); per worker",
    )
    auth_failure_window_s: float = Field(
        default=60.0, gt=0, le=86_400, description="the window of auth_failure_limit, in seconds"
    )
    auth_failure_clients: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="client addresses whose failed authentications are remembered (the least recently failed "
        "forgotten first)",
    )
    host: str = Field(default="127.0.0.1", description="bind address of `keepfit serve`")
    port: int = Field(default=8000, ge=1, le=65535, description="port of `keepfit serve`")
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes of `keepfit serve`")

    @field_validator("api_keys", "cors_origins", "admin_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, value: Any) -> Any:
        names = _split(value)
        if not isinstance(names, list):
            return names
        resolved = [_PROVIDER_ALIASES.get(str(n).lower(), str(n)) for n in names]
        # a name no ONNX Runtime build has is a typo ("cpux"): refused; a real one this build lacks (CUDA in the
        # CPU image) falls back to the CPU with a warning at start-up
        import onnxruntime as ort

        known = ort.get_all_providers()
        unknown = [n for n in resolved if n not in known]
        if unknown:
            raise ValueError(
                f"unknown ONNX Runtime provider {unknown[0]!r}; use {', '.join(_PROVIDER_ALIASES)} or a full name "
                f"such as CUDAExecutionProvider"
            )
        return resolved or ["CPUExecutionProvider"]

    @field_validator("index", "redis_url", "public_url", "threads", "classifiers", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # compose files pass unset variables as empty strings
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("inference_concurrency", mode="before")
    @classmethod
    def _empty_is_automatic(cls, value: Any) -> Any:
        return 0 if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # checked here, before the model loads: a URL redis-py cannot use failed only inside the app's start-up, in
        # a traceback (a port "notaport"), and one it misreads was used as something else ("/abc" as database 0)
        if value is None:
            return None
        url = value.strip()
        example = "(e.g. redis://localhost:6379/0)"
        if not url.lower().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix:// {example}")
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(url)
        if parts.scheme.lower() != "unix":
            try:
                port = parts.port  # ValueError: not a number, or over 65535
            except ValueError:
                port = 0
            if port == 0:
                raise ValueError(f"redis_url's port must be a number from 1 to 65535 {example}")
            if parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
                db = parts.path[1:]
                raise ValueError(f"redis_url's database (after the host) must be a number, not {db!r} {example}")
        elif not parts.path:
            raise ValueError("redis_url unix:// needs the socket's path (e.g. unix:///run/redis.sock?db=0)")
        for db in parse_qs(parts.query).get("db", []):
            if not db.isdigit():
                raise ValueError(f"redis_url's db parameter must be a number, not {db!r} {example}")
        try:  # whatever else redis-py would refuse at start-up (a bad query parameter's value, say)
            from redis.connection import parse_url
        except ImportError:  # no redis-py here: the service reports that itself
            return url
        try:
            options = parse_url(url)
        except ValueError as err:
            raise ValueError(f"redis_url cannot be used: {err}") from err
        if options.get("decode_responses"):  # every hit failed to decode, and was taken for a Redis outage
            raise ValueError("redis_url cannot be used with decode_responses: the cache stores bytes; remove it")
        return url

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _header_safe_keys(cls, value: list[str]) -> list[str]:
        # a key arrives as the bytes of an X-API-Key header, which clients send as ASCII (a browser's fetch refuses
        # anything else, curl sends UTF-8 that the server reads as Latin-1): a key with any other character was
        # accepted here and then refused every request with 401 "wrong API key"
        for number, key in enumerate(value, 1):
            bad = next((c for c in key if not " " <= c <= "~"), None)
            if bad is not None:
                raise ValueError(
                    f"key {number} has the character {bad!r}, which an HTTP header cannot carry "
                    "as typed: use ASCII letters, digits and punctuation only"
                )
        return value

    @field_validator("max_pixels")
    @classmethod
    def _within_pillow(cls, value: int) -> int:
        # Pillow refuses a larger image as a decompression bomb whatever this says: 100 Mpx with a limit of 200 Mpx
        # was refused as "image has 100000000 pixels (decompression bomb?); the limit is 200000000"
        from PIL import Image

        ceiling = Image.MAX_IMAGE_PIXELS
        if ceiling is not None and value > ceiling:
            raise ValueError(f"max_pixels is at most {ceiling} (Pillow's decompression-bomb limit), got {value}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # a browser sends its origin as scheme://host[:port]: anything else never matches and refuses every preflight
        bad = [o for o in value if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o)]
        if bad:
            raise ValueError(f"cors_origins are scheme://host[:port] (or *), without a path: {', '.join(bad)}")
        return value

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        # scheme://host[:port][/path]: image URLs are this plus /v1/images/<id>, so a query, a fragment or a space
        # (or a line break inside the value) made every one of them broken
        if value is not None and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value.strip()):
            raise ValueError(
                f"public_url must be an http:// or https:// URL (scheme://host[:port][/path], no query, fragment or "
                f"space), got {value!r}"
            )
        return value.strip().rstrip("/") if value is not None else None

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        from model.logs import LOG_FORMATS

        fmt = value.strip().lower()
        if fmt not in LOG_FORMATS:
            raise ValueError(f"log_format must be text or json, got {value!r}")
        return fmt

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)  # the names every other command takes
        if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError(f"log_level must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG, got {value!r}")
        return level

    @property
    def upload_budget(self) -> int:
        """Bytes of request bodies the process receives at once (bounds the memory uploads hold)."""
        return self.upload_budget_bytes or 8 * self.max_upload_bytes

    @property
    def metrics_need_key(self) -> bool:
        """Whether ``/metrics`` needs an API key: ``protect_metrics`` with keys configured."""
        return bool(self.api_keys and self.protect_metrics)

    @property
    def classifiers_dir(self) -> Path:
        """Where classifiers live: ``classifiers``, else ``<index>.classifiers`` beside the index (outside the index
        directory, which rebuilds replace), else ``./classifiers``."""
        if self.classifiers is not None:
            return self.classifiers
        if self.index is not None:
            return self.index.parent / f"{self.index.name}.classifiers"
        return Path("classifiers")

    @property
    def cores(self) -> int:
        """The CPU cores one worker process may keep busy: the cores this process may use (its affinity, capped
        by a container's CPU quota: model/cores.py, not the host's count) shared among the ``workers``."""
        return max(1, available_cores() // self.workers)

    @property
    def concurrency(self) -> int:
        """How many blocking model runs one process allows at once: ``inference_concurrency``, else the runs
        that share the worker's cores plus one waiting with its image decoded, so a core does not wait while its
        thread hands a result back (camera JPEGs on 2 cores, ``service/benchmarks/camera_speed.py --configs``:
        88-89 % of the core limit with 3 runs, 88 % with 2; behind anyio's capacity limiter, before the model
        threads took their next job themselves, 2 runs had reached only 75-77 %)."""
        if self.inference_concurrency:
            return self.inference_concurrency
        return self._sharing_runs() + 1

    def _sharing_runs(self) -> int:
        """One run per two of the worker's cores, at least 2 (one run of two threads leaves cores idle between
        its images: ``--configs 1x1x2``) and at most one per core."""
        return self.inference_concurrency or min(self.cores, max(2, self.cores // 2))

    @property
    def intra_op_threads(self) -> int:
        """ONNX Runtime threads per model run: ``threads``, else the worker's cores shared among the runs that
        share them (more oversubscribes the CPU: at 16 clients on 2 cores, 2 threads x 2 runs gave 62 % of the
        core limit where 1 x 2 gave 88 %, service/benchmarks/camera_speed.py)."""
        if self.threads:
            return self.threads
        return max(1, self.cores // self._sharing_runs())


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()


def default_artifact() -> str:
    """The artifact a command uses without ``--artifact``: ``KEEPFIT_ARTIFACT``, as the service reads it, else the
    service's default (``keepfit classify`` and ``keepfit classifier`` share it)."""
    return os.environ.get("KEEPFIT_ARTIFACT", str(Settings.model_fields["artifact"].default))


INDEX_SEARCH_DIRS = ("indexes",)


def find_index(artifact: Path) -> Path | None:
    """An index built for this artifact in the conventional places, if there is one."""
    for root in INDEX_SEARCH_DIRS:
        for name in (artifact.name, "default"):
            candidate = Path(root) / name
            if (candidate / "index_manifest.json").is_file():
                return candidate
    return None


def with_found_index(settings: Settings) -> Settings:
    """``settings`` as ``keepfit serve`` runs with them: naming no index, the one :func:`find_index` finds for
    their artifact (in the current folder).  Its classifier store (:attr:`Settings.classifiers_dir`) is then the one
    beside that index: ``keepfit classifier`` resolves its store through here too, so that, in the same folder and
    environment, it works on the store the service uses (it looked for ``./classifiers`` and made one there that the
    service never read)."""
    if settings.index is not None:
        return settings
    found = find_index(settings.artifact)
    return settings if found is None else settings.model_copy(update={"index": found})


# KEEPFIT_* variables that are not service settings: compose's (images, limits, mounts), the tests' and the
# benchmarks'.  Anything else starting KEEPFIT_ is a typo the service would otherwise ignore.
OTHER_VARIABLES = frozenset({
    "KEEPFIT_API_CPUS", "KEEPFIT_API_MEMORY", "KEEPFIT_ARTIFACTS", "KEEPFIT_ARTIFACT_NAME", "KEEPFIT_BIND",
    "KEEPFIT_BUILD_NETWORK", "KEEPFIT_CHROMIUM", "KEEPFIT_DATA_ROOT", "KEEPFIT_GPUS", "KEEPFIT_GPU_IMAGE",
    "KEEPFIT_IMAGE", "KEEPFIT_IMAGES", "KEEPFIT_INDEX_CPUS", "KEEPFIT_INDEX_MEMORY", "KEEPFIT_INDEX_NAME",
    "KEEPFIT_LOG_MAX_FILES", "KEEPFIT_LOG_MAX_SIZE", "KEEPFIT_PULL_POLICY", "KEEPFIT_STOP_GRACE_PERIOD", "KEEPFIT_URL",
})


# A key shorter than this is one a caller could guess (keys are compared in constant time, and failures are limited
# per client address, KEEPFIT_AUTH_FAILURE_LIMIT, but a caller with many addresses guesses on)
SHORT_KEY = 16


def key_warnings(settings: Settings) -> list[str]:
    """What an operator should hear about the keys at start-up (never the keys themselves): short ones, and keys
    that are both a read key and an admin key (whoever reads with it may also change the classifiers)."""
    out = []
    for name, keys in (("KEEPFIT_API_KEYS", settings.api_keys), ("KEEPFIT_ADMIN_KEYS", settings.admin_keys)):
        short = [n for n, key in enumerate(keys, 1) if len(key) < SHORT_KEY]
        if short:
            out.append(f"{name}: key {', '.join(map(str, short))} of {len(keys)} is shorter than {SHORT_KEY} "
                       "characters, which a caller could guess; use e.g. `python -c 'import secrets; "
                       "print(secrets.token_urlsafe(24))'`")
    both = sum(key in settings.api_keys for key in dict.fromkeys(settings.admin_keys))
    if both:
        out.append(f"{both} key(s) of KEEPFIT_ADMIN_KEYS are also in KEEPFIT_API_KEYS: every client that reads with "
                   "one may also create, refit and delete classifiers")
    return out


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``KEEPFIT_*`` variables that name no setting, each with the setting it most resembles (or None):
    ``KEEPFIT_API_KEY`` -> ``KEEPFIT_API_KEYS``, a typo that would serve without keys."""
    import difflib

    settings = [f"KEEPFIT_{name.upper()}" for name in Settings.model_fields]
    out = []
    for name in sorted(environ):
        if name.startswith("KEEPFIT_") and name not in settings and name not in OTHER_VARIABLES:
            close = difflib.get_close_matches(name, settings, n=1, cutoff=0.85)
            out.append((name, close[0] if close else None))
    return out
