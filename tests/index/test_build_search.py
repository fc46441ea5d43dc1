"""Build over real images and search them: metadata, duplicates, self-retrieval, filters, concurrency."""

from __future__ import annotations

import csv
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index import sources, store
from index.ann import AnnSpec
from index.build import Report, build, reindex
from index.store import VectorIndex
from model.errors import IndexMismatchError
from model.preprocess import load_image
from model.runtime import KeepfitRuntime
from tests.index.conftest import Archive, quiet


@pytest.fixture(scope="module")
def runtime(tiny_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(tiny_artifact)


def brute_force(index: VectorIndex, query: np.ndarray, k: int, keep: np.ndarray | None = None) -> list[int]:
    """Exact top-k ids by cosine over the stored vectors, ties by id (the store's order)."""
    sims = np.asarray(index.vectors()) @ query  # [N]
    ids = index.ids
    if keep is not None:
        sims, ids = sims[keep], ids[keep]
    order = sorted(range(len(ids)), key=lambda i: (-float(sims[i]), int(ids[i])))
    return [int(ids[i]) for i in order[:k]]


def test_build_stores_each_image_once_with_its_metadata(
    archive: Archive, built_index: tuple[Path, Report]
) -> None:
    directory, report = built_index
    assert (report.inputs, report.added, report.duplicates, sum(report.skipped.values())) == (23, 22, 1, 0)
    with VectorIndex.open(directory) as index:
        assert index.count == 22 and index.index_type == "flat"
        by_path = {r.path: r for r in index.records()}
        for row in archive.rows[:-1]:
            record = by_path[row["path"]]
            file = archive.root / row["path"]
            with Image.open(file) as img:
                assert (record.width, record.height) == img.size
            assert record.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
            assert record.modality == row["modality"]
            assert index.image_path(record) == file
        # the byte-identical copy was not stored again; its label joined the first one's
        first = by_path[archive.rows[0]["path"]]
        expected = [archive.rows[0]["dme"], archive.rows[0]["dr"], "glaucoma"]
        assert first.labels == expected
        assert "cfp/copy_of_first.jpg" not in by_path
        assert index.get(first.id) == first and index.get(10_000) is None
        assert index.label_counts()["glaucoma"] == 1
        assert index.modality_counts() == {"CFP": 8, "FFA": 8, "OCT": 6}


def test_image_query_finds_itself_first(built_index: tuple[Path, Report], runtime: KeepfitRuntime) -> None:
    with VectorIndex.open(built_index[0], runtime.version, expected_dim=runtime.embed_dim) as index:
        assert index.artifact_version == runtime.version and index.artifact_name == "keepfit-tiny"
        for record in index.records()[::5]:
            query = runtime.encode_images([load_image(index.image_path(record))])[0]
            hits = index.search(query, 3)
            assert hits[0].record.id == record.id
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert hits[0].score >= hits[1].score >= hits[2].score


def test_text_query_ranks_like_exact_cosine(
    built_index: tuple[Path, Report], runtime: KeepfitRuntime
) -> None:
    query = runtime.encode_texts(["diabetic macular edema"])[0]
    with VectorIndex.open(built_index[0]) as index:
        hits = index.search(query, 7)
        assert [h.record.id for h in hits] == brute_force(index, query, 7)
        stored = dict(zip(index.ids.tolist(), np.asarray(index.vectors()) @ query, strict=True))
        assert [h.score for h in hits] == pytest.approx([float(stored[h.record.id]) for h in hits], abs=1e-5)
        assert len(index.search(query, 100)) == 22  # top_k above the count: everything, once


def test_filters_return_top_k_matching_records(
    built_index: tuple[Path, Report], runtime: KeepfitRuntime
) -> None:
    query = runtime.encode_texts(["retina"])[0]
    with VectorIndex.open(built_index[0]) as index:
        records = {r.id: r for r in index.records()}
        oct_mask = np.asarray([records[int(i)].modality == "OCT" for i in index.ids])
        hits = index.search(query, 5, modality="OCT")
        assert [h.record.id for h in hits] == brute_force(index, query, 5, oct_mask)
        assert [h.record.id for h in index.search(query, 5, modality="oct")] == [h.record.id for h in hits]

        dme = [r for r in records.values() if "diabetic macular edema" in r.labels]
        assert len({r.modality for r in dme}) == 2 and len(dme) >= 7  # CFP and OCT ones
        # abbreviation and case are accepted; all matches come back when fewer than top_k exist
        by_abbreviation = index.search(query, 50, label="DME")
        assert sorted(h.record.id for h in by_abbreviation) == sorted(r.id for r in dme)
        both = index.search(query, 50, modality="CFP", label="Diabetic Macular Edema")
        assert {h.record.id for h in both} == {r.id for r in dme if r.modality == "CFP"}
        assert index.search(query, 5, label="no such disease") == []
        assert index.search(query, 5, modality="ICGA") == []


def test_the_filters_kept_are_bounded_in_bytes(
    built_index: tuple[Path, Report], runtime: KeepfitRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 filters were kept whatever their size: at 1M images about 300 MB of a service's memory for broad ones.
    Now at most FILTER_CACHE_BYTES of them (but always the last), with the same answers."""
    query = runtime.encode_texts(["retina"])[0]
    filters = [("CFP", None), ("OCT", None), ("FFA", None), (None, "DME"), ("CFP", "DME"), ("OCT", "DME")]
    with VectorIndex.open(built_index[0]) as index:
        expected = [[h.record.id for h in index.search(query, 5, modality=m, label=lb)] for m, lb in filters]
        assert len(index._filters) == len(filters) and index._filters_bytes == sum(
            store._filter_bytes(e) for e in index._filters.values())
        largest = max(store._filter_bytes(e) for e in index._filters.values())
    monkeypatch.setattr(store, "FILTER_CACHE_BYTES", largest * 2)
    with VectorIndex.open(built_index[0]) as index:
        for (modality, label), ids in zip(filters * 2, expected * 2, strict=True):
            assert [h.record.id for h in index.search(query, 5, modality=modality, label=label)] == ids
            assert 1 <= len(index._filters) < len(filters) and index._filters_bytes <= largest * 2
            assert index._filters_bytes == sum(store._filter_bytes(e) for e in index._filters.values())
    monkeypatch.setattr(store, "FILTER_CACHE_BYTES", 1)  # smaller than any: the last one is kept all the same
    with VectorIndex.open(built_index[0]) as index:
        index.search(query, 5, modality="CFP")
        index.search(query, 5, modality="OCT")
        assert list(index._filters) == [("oct", None)]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_filters_still_fill_top_k(
    index_copy: Path, runtime: KeepfitRuntime, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a selective filter an approximate index may find too few matches in what it probes: the store widens
    the search and, if still short, scans the matches exactly, so top_k matching records always come back."""
    reindex(index_copy, AnnSpec(kind=kind, nlist=4, nprobe=1, ef_search=4))
    monkeypatch.setattr(store, "EXACT_FILTER_MAX", 0)  # force the approximate path even for a tiny index
    query = runtime.encode_texts(["optical coherence tomography"])[0]
    with VectorIndex.open(index_copy) as index:
        assert index.index_type == kind
        records = {r.id: r for r in index.records()}
        for modality in ("CFP", "OCT", "FFA"):
            mask = np.asarray([records[int(i)].modality == modality for i in index.ids])
            hits = index.search(query, 4, modality=modality)
            assert len(hits) == 4 and {h.record.modality for h in hits} == {modality}
            assert [h.record.id for h in hits] == brute_force(index, query, 4, mask)


def test_concurrent_searches_agree_with_sequential(
    built_index: tuple[Path, Report], runtime: KeepfitRuntime
) -> None:
    queries = runtime.encode_texts([f"fundus finding number {i}" for i in range(16)])
    filters = [(None, None), ("OCT", None), (None, "DME"), ("FFA", "normal")]
    with VectorIndex.open(built_index[0]) as index:

        def run(i: int) -> list[int]:
            modality, label = filters[i % len(filters)]
            return [h.record.id for h in index.search(queries[i % 16], 5, modality=modality, label=label)]

        sequential = [run(i) for i in range(64)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(run, range(64)))
    assert parallel == sequential and all(sequential)


def test_bad_queries_are_refused(built_index: tuple[Path, Report]) -> None:
    with VectorIndex.open(built_index[0]) as index:
        with pytest.raises(IndexMismatchError, match="dimension 7"):
            index.search(np.ones(7, np.float32), 3)
        with pytest.raises(ValueError, match="NaN"):
            index.search(np.full(index.dim, np.nan, np.float32), 3)
        with pytest.raises(ValueError, match="top_k"):
            index.search(np.ones(index.dim, np.float32), 0)


def _same_pixels_archive(root: Path, picture: Image.Image) -> tuple[Path, Path]:
    """Four files of ``picture``'s pixels (PNG, BMP, TIFF, a PNG saved faster: other bytes, so other images to the
    index), then the query itself, another file of those pixels listed last (so it has the largest id of the five,
    which tie), and two other pictures; the manifest labels and modality of each."""
    root.mkdir()
    pixels = picture.convert("RGB")
    rows = []
    for name, finding, kwargs in (
        ("copy_a.png", "set-a", {}),
        ("copy_b.bmp", "set-a", {}),
        ("copy_c.tif", "set-a", {}),
        ("copy_d.png", "set-b", {"compress_level": 1}),
        ("query.png", "set-a", {"compress_level": 9}),
    ):
        pixels.save(root / name, None, **kwargs)
        rows.append({"path": name, "modality": "CFP", "finding": finding})
    for i, colour in enumerate([(30, 160, 40), (200, 60, 90)]):
        Image.new("RGB", (160, 160), colour).save(root / f"other{i}.png")
        rows.append({"path": f"other{i}.png", "modality": "OCT", "finding": "set-b"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, root / "query.png"


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_an_image_query_behind_top_k_copies_of_its_pixels_is_still_a_hit(
    tiny_artifact: Path, golden_image: Image.Image, tmp_path: Path, kind: str
) -> None:
    """Other files of the same pixels tie with the query itself (or, embedded in another batch, score higher): with
    top_k of them in the index the search returned only them, and the query itself, though indexed, was not among
    its hits.  With ``itself`` (the query file's SHA-256) it is, in place of the last hit, unless a filter
    excludes it; the number of hits stays top_k."""
    manifest, query_file = _same_pixels_archive(tmp_path / "archive", golden_image)
    out = tmp_path / "index"
    build(out, sources.from_manifests([manifest]), tiny_artifact, options=quiet())
    if kind != "flat":
        reindex(out, AnnSpec(kind=kind, nlist=2, nprobe=1, ef_search=4))
    digest = hashlib.sha256(query_file.read_bytes()).hexdigest()
    with VectorIndex.open(out) as index:
        assert index.index_type == kind
        [own] = [r for r in index.records() if r.sha256 == digest]
        copies = [r.id for r in index.records() if r.path.startswith("copy_")]
        query = index.vectors_of([own.id])[0]
        if kind == "flat":  # the case: 4 copies tie with it and come first (approximate: whichever it meets)
            assert own.id not in [h.record.id for h in index.search(query, 3)]
        for top_k in (1, 3, 5):
            hits = index.search(query, top_k, itself=digest)
            assert len(hits) == top_k and own.id in [h.record.id for h in hits]
            assert all(h.record.id in {own.id, *copies} for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            assert dict((h.record.id, h.score) for h in hits)[own.id] == pytest.approx(1.0, abs=1e-5)
        assert [h.record.id for h in index.search(query, 7, itself=digest)] == [
            h.record.id for h in index.search(query, 7)
        ]  # already among them: nothing changes
        # a filter the query itself passes: it is among the matches
        hits = index.search(query, 2, label="set-a", itself=digest)
        assert len(hits) == 2 and own.id in [h.record.id for h in hits]
        assert all("set-a" in h.record.labels for h in hits)
        hits = index.search(query, 3, modality="cfp", itself=digest)
        assert len(hits) == 3 and own.id in [h.record.id for h in hits]
        # a filter that excludes it: it is not added
        for filters in ({"label": "set-b"}, {"modality": "OCT"}, {"modality": "CFP", "label": "set-b"}):
            hits = index.search(query, 2, itself=digest, **filters)  # type: ignore[arg-type]
            assert own.id not in [h.record.id for h in hits]
            assert [h.record.id for h in hits] == [h.record.id for h in index.search(query, 2, **filters)]  # type: ignore[arg-type]
        # a file the index does not hold changes nothing
        assert index.search(query, 3, itself="0" * 64) == index.search(query, 3)
