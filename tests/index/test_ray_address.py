"""``--ray-address`` checked before anything else: these need no Ray (test_ray.py is skipped without it)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from model.errors import DataError
from tests.index.conftest import ray_build_argv


@pytest.mark.parametrize(
    ("address", "end"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head.clinic.local:10001", ("head.clinic.local", 10001)),
        ("[::1]:6379", ("::1", 6379)),
        ("auto", None),
        ("local", None),
        ("head-node", None),
    ],
)
def test_the_tcp_end_of_a_ray_address(address: str, end: tuple[str, int] | None) -> None:
    from index.distributed import _host_port

    assert _host_port(address) == end


@pytest.mark.parametrize("address", ["localhost:99999", "localhost:0"])
def test_a_ray_address_without_a_port_is_named_so(address: str) -> None:
    """It was "Connection refused"."""
    from index.distributed import check_reachable

    with pytest.raises(DataError, match=f"--ray-address {address}: .* is not a port \\(1 to 65535\\)"):
        check_reachable(address)


def test_a_closed_port_is_refused_before_ray_is_asked(
    one_image: Path, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ray's own single attempt took about 20 s to say that nothing listened there."""
    from model.cli import main as keepfit

    monkeypatch.setitem(sys.modules, "ray", None)  # never imported: the address is refused first
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "new" / "index"
    assert keepfit(ray_build_argv(one_image, tiny_artifact, out, "--ray-address", f"ray://127.0.0.1:{port}")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot connect to the Ray cluster at ray://127.0.0.1:{port}: Connection refused (127.0.0.1 port {port})"
    )
    assert not (tmp_path / "new").exists()
    assert keepfit(ray_build_argv(one_image, tiny_artifact, out, "--ray-address", "no-such-host.invalid:6379")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cannot connect to the Ray cluster at no-such-host.invalid:6379: unknown host 'no-such-host.invalid'"
    )


