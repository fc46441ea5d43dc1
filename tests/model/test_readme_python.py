"""The README's Python examples run as shown: each ```python block of README.md, in a fresh interpreter, from a
folder that holds the repository's ``artifacts`` and an ``eye.jpg`` (a generated fundus photograph), as a reader
running it from the repository root would."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)


def test_the_readme_has_python_examples() -> None:
    assert BLOCKS, "README.md has no ```python block: the model library's example is gone"


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_a_readme_python_example_runs(number: int, tmp_path: Path, golden_image: Image.Image) -> None:
    (tmp_path / "artifacts").symlink_to(ROOT / "artifacts")
    golden_image.save(tmp_path / "eye.jpg", quality=95)
    script = tmp_path / "example.py"
    script.write_text(BLOCKS[number])
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, f"README python block {number + 1} failed:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), "the example printed nothing"
    if "runtime.predict" in BLOCKS[number]:  # the model library's example: what it prints means what it says
        first, *rest = done.stdout.strip().splitlines()
        modality, decision, probs = first.split(" ", 2)
        shown = ast.literal_eval(probs)
        assert modality == "CFP" and decision == "screening"
        assert list(shown) == ["normal", "diabetic retinopathy", "glaucoma"]
        assert sum(shown.values()) == pytest.approx(1.0, abs=0.002)
        # a text's cosine similarity, then a known category's (as search scores each)
        similarities = [float(line.strip("[]")) for line in rest]
        assert len(similarities) == 2 and all(-1.0 <= x <= 1.0 for x in similarities)
