"""A service in a container with a CPU quota sizes its model runs and threads from the quota, not the host."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.benchmarks._common import cpu_limited, serve


@pytest.fixture
def one_cpu() -> Iterator[list[str]]:
    with ExitStack() as stack:
        try:
            prefix = stack.enter_context(cpu_limited(1.0)).prefix
        except SystemExit as err:
            pytest.skip(str(err))
        yield prefix


def test_serve_in_a_one_cpu_cgroup_sizes_itself_for_one_core(
    one_cpu: list[str], default_artifact: Path, golden_image: Image.Image
) -> None:
    # the host has more cores than the quota pays for only where it has 2 or more; the sizing must follow the
    # quota either way: one run on the core and one waiting, one ONNX thread each
    with serve(["--artifact", str(default_artifact)], env={"KEEPFIT_WORKERS": "1"}, prefix=one_cpu) as (base, _):
        compute = httpx.get(f"{base}/readyz").json()["compute"]
        assert compute == {"cores": 1, "cpu_quota": 1.0, "workers": 1, "model_runs": 2, "onnx_threads": 1}
        buf = io.BytesIO()
        golden_image.save(buf, "PNG")
        r = httpx.post(f"{base}/v1/classify", files={"image": ("g.png", buf.getvalue(), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
