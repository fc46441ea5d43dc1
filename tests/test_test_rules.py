"""The suite's own rules for what it cannot run: a skip with its reason on a user's clone, a failure in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


@pytest.mark.parametrize("in_ci", [False, True], ids=["clone", "ci"])
def test_a_missing_module_is_a_skip_on_a_clone_and_a_failure_in_ci(monkeypatch: pytest.MonkeyPatch, in_ci: bool) -> None:
    monkeypatch.setattr(conftest, "IN_CI", in_ci)
    with pytest.raises(pytest.fail.Exception if in_ci else pytest.skip.Exception) as raised:
        conftest.require_module("keepfit_no_such_module")
    assert "keepfit_no_such_module is not installed" in str(raised.value)
    assert ("CI=true" in str(raised.value)) is in_ci
    assert conftest.require_module("json").dumps([]) == "[]"


@pytest.mark.parametrize("in_ci", [False, True], ids=["clone", "ci"])
def test_missing_data_is_a_skip_on_a_clone_and_a_failure_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, in_ci: bool
) -> None:
    monkeypatch.setattr(conftest, "IN_CI", in_ci)
    monkeypatch.setattr(conftest, "DATA_ROOT", tmp_path)
    with pytest.raises(pytest.fail.Exception if in_ci else pytest.skip.Exception) as raised:
        conftest.require_data()
    assert "real data not found" in str(raised.value) and ("CI=true" in str(raised.value)) is in_ci
