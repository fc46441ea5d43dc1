"""Few-shot classifiers: how long a fit takes, and what classifying with one costs against zero-shot.

1. Builds a small index of real ``dr_sh_600`` train photographs (16 per class of no DR, mild NPDR, moderate
   NPDR), then fits a 3-class classifier from index ids with ``POST /v1/classifiers`` (in-process app, the
   lifespan run) several times: the fit itself (``fit_ms``: fitting + 5-fold cross-validation) and the whole
   request (parsing, index lookups, fitting, the atomic write).
2. Classifies the same test images with ``classifier=NAME`` and zero-shot with the same 3 categories, cache
   off, interleaved, and prints the median latencies and their ratio.

    python -m service.benchmarks.classifier_fit [--data-root ../shared/data] [--images 20] [--repeats 7]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from service.benchmarks._common import DEFAULT_DATA, ROOT, positive_int

CLASSES = (
    "no diabetic retinopathy",
    "mild non-proliferative diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    parser.add_argument("--per-class", type=positive_int, default=16)
    parser.add_argument("--images", type=positive_int, default=20, help="test images classified both ways")
    parser.add_argument("--repeats", type=positive_int, default=7)
    args = parser.parse_args(argv)

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    labels = args.data_root / "dr_sh_600" / "labels.csv"
    rows = sorted(csv.DictReader(labels.open()), key=lambda r: r["path"])
    train = {
        c: [r for r in rows if r["split"] == "train" and r["dr_grade"] == c][: args.per_class]
        for c in CLASSES
    }
    test = [r for r in rows if r["split"] == "test" and r["dr_grade"] in CLASSES][: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        index = _build_index(args.artifact, labels, train, work)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            artifact=args.artifact,
            index=index,
            classifiers=work / "classifiers",
            cache_max_entries=0,
        )
        with TestClient(create_app(settings)) as api:
            paths = {c: [(labels.parent / r["path"]).resolve() for r in train[c]] for c in CLASSES}
            _time_fits(api, index, paths, args.repeats)
            _time_classify(api, [(labels.parent / r["path"]).read_bytes() for r in test])
    return 0


def _build_index(artifact: Path, labels: Path, train: dict[str, list[dict[str, str]]], work: Path) -> Path:
    """An index of the training examples (a manifest written for them), built with ``keepfit index build``."""
    from model.cli import main as keepfit

    manifest = work / "train.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "modality", "dr_grade"])
        writer.writeheader()
        for c in CLASSES:
            for r in train[c]:
                writer.writerow({"path": str((labels.parent / r["path"]).resolve()), "modality": "CFP", "dr_grade": c})
    index = work / "index"
    start = time.perf_counter()
    code = keepfit(["index", "build", "--artifact", str(artifact), "--manifest", str(manifest), "--out", str(index)])
    if code != 0:
        raise SystemExit(f"keepfit index build exited with {code}")
    print(f"index of {sum(len(v) for v in train.values())} images built in {time.perf_counter() - start:.1f} s")
    return index


def _time_fits(api: Any, index: Path, train: dict[str, list[Path]], repeats: int) -> None:
    """``repeats`` fits of one classifier from the index ids: the fit alone and the whole request."""
    from index.store import VectorIndex

    per_class = min(len(v) for v in train.values())
    with VectorIndex.open(index) as idx:  # by path: the index stores the knowledge's canonical label names
        ids = {c: [rec.id for path in paths for rec in idx.find_path(path)] for c, paths in train.items()}
    spec = {"modality": "CFP", "categories": [{"label": c, "ids": ids[c]} for c in CLASSES]}
    fit_ms, total_ms = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        created = api.post("/v1/classifiers", json={"name": f"bench-{i}", **spec})
        total_ms.append((time.perf_counter() - t0) * 1000)
        assert created.status_code == 201, created.text
        fit_ms.append(created.json()["fit_ms"])
        print(f"  fit {i}: {created.json()['timings_ms']}")
    body = created.json()
    print(
        f"fit, 3 classes x {per_class} examples from index ids ({body['method']}, "
        f"estimate {body['estimate']['balanced_accuracy']} {body['estimate']['scheme']}): "
        f"fit + cross-validation median {statistics.median(fit_ms):.1f} ms, whole request median "
        f"{statistics.median(total_ms):.1f} ms (max {max(total_ms):.1f} ms) over {repeats} fits"
    )


def _time_classify(api: Any, images: list[bytes]) -> None:
    """Zero-shot vs. the ``bench-0`` classifier on the same images, interleaved, cache off, once the store has been
    still for :data:`service.classifiers.RACY_STAMP_NS` (within it, its rows are read again for every request:
    a commit in the same file-time tick would look like none), as a classifier in use is."""
    from service.classifiers import RACY_STAMP_NS

    time.sleep(RACY_STAMP_NS / 1e9)
    zero, few = [], []
    for data in images * 2:  # interleaved, twice: the second round has warm file caches for both
        t0 = time.perf_counter()
        a = api.post("/v1/classify", files={"image": data}, data={"categories": list(CLASSES), "modality": "CFP"})
        zero.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        b = api.post("/v1/classify", files={"image": data}, data={"classifier": "bench-0"})
        few.append((time.perf_counter() - t0) * 1000)
        assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    mz, mf = statistics.median(zero), statistics.median(few)
    print(
        f"classify {len(images)} test images x2, cache off: zero-shot median {mz:.1f} ms, with the "
        f"classifier median {mf:.1f} ms, ratio classifier / zero-shot = {mf / mz:.2f}"
    )

if __name__ == "__main__":
    raise SystemExit(main())
