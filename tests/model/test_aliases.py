"""Aliases: every wording of a category resolves to it and is scored with its expert prompts; unknown names get a
prompt ensemble and near matches, never a substitute; the knowledge build refuses ambiguous aliases; an artifact
can be given new knowledge (new hashes, new version)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.artifact import load_artifact, replace_knowledge
from model.errors import ArtifactError, ConfigError
from model.knowledge import ALIASES_FILE, Knowledge, build_knowledge, name_key

NORMAL_WORDS = [
    "normal", "Normal", "healthy", "no findings", "no abnormality", "unremarkable", "normal fundus", "normal retina",
    "normal OCT", "normal angiogram", "within normal limits", "  Healthy   eye ",
]


@pytest.mark.parametrize("word", NORMAL_WORDS)
def test_every_word_for_a_healthy_eye_is_the_normal_class(word: str) -> None:
    k = Knowledge.default()
    assert k.canonical(word) == "normal" and k.is_known(word)
    for modality in k.modalities:
        assert k.prompts(word, modality) == k.prompts("normal", modality)


@pytest.mark.parametrize(
    ("word", "category"),
    [
        ("DME", "diabetic macular edema"), ("DMO", "diabetic macular edema"),
        ("diabetic macular oedema", "diabetic macular edema"), ("no DME", "no diabetic macular edema"),
        ("DR", "diabetic retinopathy"), ("no DR", "no diabetic retinopathy"),
        ("NPDR", "non-proliferative diabetic retinopathy"),
        ("nonproliferative diabetic retinopathy", "non-proliferative diabetic retinopathy"),
        ("Non Proliferative Diabetic Retinopathy", "non-proliferative diabetic retinopathy"),
        ("PDR", "proliferative diabetic retinopathy"), ("BRVO", "branch retinal vein occlusion"),
        ("CRVO", "central retinal vein occlusion"), ("AMD", "age related macular degeneration"),
        ("age-related macular degeneration", "age related macular degeneration"),
        ("ARMD", "age related macular degeneration"), ("wet AMD", "neovascular age related macular degeneration"),
        ("CNV", "neovascular age related macular degeneration"), ("NPA", "non-perfusion area"),
        ("capillary non-perfusion", "non-perfusion area"), ("pathological myopia", "pathologic myopia"),
        ("glaucomatous optic neuropathy", "glaucoma"), ("retinal hemorrhages", "haemorrhages"),
        ("neovascularization", "neovascularisation"), ("CSCR", "central serous retinopathy"),
    ],
)
def test_abbreviations_spellings_and_synonyms_resolve(word: str, category: str) -> None:
    k = Knowledge.default()
    assert k.canonical(word) == category
    assert k.prompts(word, "CFP") == k.prompts(category, "CFP")


def test_every_default_and_task_category_has_aliases() -> None:
    k = Knowledge.default()
    named = {c for m in k.modalities for c in k.category_set(m)}
    named |= {c for t in k.data["tasks"].values() for c in t["categories"]} - {"arterial phase", "venous phase"}
    missing = sorted(c for c in named if not k.aliases(c))
    assert not missing, f"categories offered without aliases: {missing}"
    assert {"healthy", "no findings", "unremarkable"} <= set(k.aliases("normal", "CFP"))
    assert "normal fundus" in k.aliases("normal", "CFP") and "normal fundus" not in k.aliases("normal", "OCT")
    assert "normal OCT" in k.aliases("normal", "OCT") and "normal angiogram" in k.aliases("normal", "FFA")


def test_the_normal_class_has_many_descriptions_per_modality() -> None:
    k = Knowledge.default()
    for modality, at_least in (("CFP", 8), ("FFA", 6), ("OCT", 6)):
        descriptions = k.descriptions("normal", modality)
        assert len(descriptions) >= at_least, (modality, descriptions)
    assert any("cup-to-disc" in d for d in k.descriptions("normal", "CFP"))
    assert any("foveal" in d for d in k.descriptions("normal", "OCT"))


def test_unknown_names_get_an_ensemble_and_suggestions_never_a_substitute() -> None:
    k = Knowledge.default()
    for modality in k.modalities:
        prompts = k.prompts("myopia", modality)
        assert len(prompts) >= 4 and all("myopia" in p for p in prompts)
        assert prompts[0] == k.template(modality).format("myopia")
    assert k.canonical("myopia") == "myopia" and not k.is_known("myopia")
    assert k.similar_known("myopia")[0] == "pathologic myopia"
    assert k.similar_known("glaucome")[0] == "glaucoma"
    assert "diabetic macular edema" in k.similar_known("diabetic macula edema")
    assert k.similar_known("astrology") == [] and k.similar_known("glaucoma") == []


def test_similar_known_is_computed_once_per_name_and_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """/v1/classify asks it of every unknown name of every request (~2 ms each): an answer is kept per name key,
    equal to a fresh one, safe from a caller that changes the list it got, and the memo holds a bounded number."""
    import model.knowledge as knowledge_module

    monkeypatch.setattr(knowledge_module, "SIMILAR_CACHE_SIZE", 3)
    k, fresh = Knowledge.default(), Knowledge.default()
    computed: list[str] = []
    uncached = Knowledge._similar_known

    def counting(self: Knowledge, key: str, limit: int, cutoff: float) -> list[str]:
        computed.append(key)
        return uncached(self, key, limit, cutoff)

    monkeypatch.setattr(Knowledge, "_similar_known", counting)
    k.similar_known("myopia").append("changed by a caller")
    assert k.similar_known("Myopia.") == k.similar_known("myopia") == ["pathologic myopia"]
    assert computed == ["myopia"]  # "Myopia." has the same key; the repeats came from the memo
    names = ["glaucome", "diabetic macula edema", "astrology", "macular holes"]
    assert [k.similar_known(n) for n in names] == [fresh.similar_known(n) for n in names]
    assert k.similar_known("myopia", limit=1) == fresh.similar_known("myopia", limit=1)
    assert len(k._similar) == 3  # at most SIMILAR_CACHE_SIZE answers kept, the least recent evicted


def test_format_1_knowledge_still_reads_as_before(default_artifact: Path) -> None:
    """Artifacts exported before aliases existed: abbreviations resolve, unknown names get the one template."""
    data = json.loads((default_artifact / "knowledge.json").read_text())
    for entry in data["categories"].values():
        entry.pop("aliases", None)
    for key in ("open_templates", "spelling"):
        data.pop(key)
    data["format"] = 1
    old = Knowledge(data)
    assert old.canonical("DME") == "diabetic macular edema"
    assert old.prompts("healthy", "CFP") == ["A fundus photograph of healthy"]
    assert old.aliases("normal") == []


def _aliases_file(tmp_path: Path, aliases: dict) -> Path:
    path = tmp_path / "aliases.json"
    path.write_text(json.dumps({"spelling": {"oedema": "edema"}, "aliases": aliases}))
    return path


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"normal": {"any": ["glaucoma"]}}, "alias 'glaucoma' of 'normal' is the name of category 'glaucoma'"),
        ({"normal": {"any": ["fine"]}, "glaucoma": {"any": ["Fine"]}}, "alias 'Fine' is claimed by 'normal' and"),
        ({"no such thing": {"any": ["x"]}}, "'no such thing', which is not a knowledge category"),
        ({"normal": {"XRAY": ["x"]}}, "unknown modality 'XRAY'"),
        ({"normal": {"any": ["DME"]}}, "is claimed by 'normal' and 'diabetic macular edema'"),
    ],
)
def test_the_build_refuses_ambiguous_aliases(data_root: Path, tmp_path: Path, aliases: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_knowledge(data_root / "text" / "knowledge_dictionary.json", _aliases_file(tmp_path, aliases))


@pytest.mark.parametrize("content", [{}, {"aliases": {}}, {"spelling": {}}, [], {"aliases": [], "spelling": {}}])
def test_an_aliases_file_without_both_objects_is_refused(data_root: Path, tmp_path: Path, content: object) -> None:
    """An empty object built knowledge with 100 aliases where 326 were meant, and status 0."""
    path = tmp_path / "aliases.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match="must be a JSON object with 'aliases' and 'spelling' objects"):
        build_knowledge(data_root / "text" / "knowledge_dictionary.json", path)


def test_the_packaged_aliases_are_unambiguous(data_root: Path) -> None:
    built = build_knowledge(data_root / "text" / "knowledge_dictionary.json", ALIASES_FILE)
    k = Knowledge(built)
    spelling = built["spelling"]
    owners: dict[str, str] = {}
    for name, entry in built["categories"].items():
        for words in entry.get("aliases", {}).values():
            for word in words:
                assert k.canonical(word) == name, word
                assert owners.setdefault(name_key(word, spelling), name) == name



def _every_name(k: Knowledge) -> list[tuple[str, str]]:
    """(name, its category) for every category name, alias and abbreviation of ``k``."""
    out = []
    for name, entry in k.data["categories"].items():
        out.append((name, name))
        out += [(alias, name) for words in (entry.get("aliases") or {}).values() for alias in words]
    for abbreviation, full in k.data.get("abbreviations", {}).items():
        if k.is_known(str(full)):
            out.append((abbreviation, k.canonical(str(full))))
    return out


@pytest.mark.parametrize("where", ["packaged", "default artifact"])
def test_an_accented_spelling_of_a_known_name_resolves_to_it_and_merges_no_two_names(
    where: str, default_artifact: Path
) -> None:
    """``Drüsen`` (German) and ``diabetic rétinopathy`` were unknown names, prompted as such beside the known ones,
    though the tokenizer drops the accents and reads the known word.  Accents fold as the tokenizer folds them; no
    two names of two categories fold to one key (every name of the knowledge is checked)."""
    import unicodedata

    k = Knowledge.default() if where == "packaged" else load_artifact(default_artifact).knowledge
    names = _every_name(k)
    owners: dict[str, str] = {}
    for word, category in names:
        assert owners.setdefault(k.key(word), category) == category, (word, owners[k.key(word)], category)
        assert k.canonical(word) == category, word
        # every vowel accented, composed (as most keyboards send it) or decomposed (as a Mac may)
        for form in ("NFC", "NFD"):
            accented = unicodedata.normalize(form, "".join(c + "\u0301" if c in "aeiouAEIOU" else c for c in word))
            assert k.is_known(accented) and k.canonical(accented) == category, (word, accented)
    assert len(names) > 500 and len(owners) > 400  # aliases listed in several modalities share a key
    for word, category in [("Drüsen", "drusens"), ("diabetic rétinopathy", "diabetic retinopathy"),
                           ("Glaucóma", "glaucoma"), ("DMÉ", "diabetic macular edema")]:
        assert k.canonical(word) == category and k.is_known(word)
    # a name in another language is still unknown (its own prompts), and so is a letter that is no accented one
    assert not k.is_known("rétinopathie diabétique") and not k.is_known("Glaukom") and not k.is_known("glaucøma")

def test_replace_knowledge_gives_a_new_verified_version(default_artifact: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(default_artifact, art)
    before = load_artifact(art)
    data = json.loads((art / "knowledge.json").read_text())
    data["categories"]["glaucoma"].setdefault("aliases", {}).setdefault("any", []).append("raised cup ratio")
    version = replace_knowledge(art, data)
    after = load_artifact(art)
    assert version == after.version != before.version
    assert after.knowledge.canonical("Raised cup ratio") == "glaucoma"
    assert after.manifest["knowledge_replaced"][-1]["previous_version"] == before.version
    assert after.manifest["evaluation"] == before.manifest["evaluation"]
    assert after.manifest["files"]["image_encoder.onnx"] == before.manifest["files"]["image_encoder.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    # a damaged artifact is refused, not re-signed
    (art / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        replace_knowledge(art, data)


def test_the_same_swap_of_the_same_artifact_is_the_same_version_whenever_it_is_made(
    default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time of a swap was part of the version: two replicas applying the same knowledge fix got two versions (a
    shared cache missed, and an index adopted by one was refused by the other)."""
    import model.artifact as artifact_module

    data = json.loads((default_artifact / "knowledge.json").read_text())
    data["categories"]["glaucoma"].setdefault("aliases", {}).setdefault("any", []).append("raised cup ratio")
    versions = []
    for replica, stamp in (("a", "2026-01-01T08:00:00+00:00"), ("b", "2026-03-05T17:30:00+00:00")):
        art = tmp_path / replica
        shutil.copytree(default_artifact, art)

        class Clock(artifact_module.datetime):  # type: ignore[misc, valid-type]
            at = stamp

            @classmethod
            def now(cls, tz: object = None) -> Clock:  # type: ignore[override]
                return cls.fromisoformat(cls.at)  # type: ignore[return-value]

        monkeypatch.setattr(artifact_module, "datetime", Clock)
        versions.append(replace_knowledge(art, data))
        manifest = load_artifact(art).manifest
        assert manifest["knowledge_replaced_at"][-1] == stamp  # when, still recorded
    assert versions[0] == versions[1]
    # and the committed artifact, swapped before, keeps its version
    assert load_artifact(default_artifact).version == json.loads((default_artifact / "manifest.json").read_text())["version"]


def test_replace_knowledge_refuses_malformed_knowledge_before_touching_the_artifact(
    default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused with the reader's checks before the artifact is copied: the refusal named the hidden staging copy
    it was found in, after the weights had been copied there."""
    from model import knowledge as knowledge_module
    from model.cli import main

    art = tmp_path / "art"
    shutil.copytree(default_artifact, art)
    before = {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()}
    good = json.loads((art / "knowledge.json").read_text())
    cases = [
        ([good], "is a JSON list, not an object"),
        ({k: v for k, v in good.items() if k != "templates"}, "lacks the 'templates' section"),
        ({**good, "format": 99}, "has format 99"),
    ]
    for bad, message in cases:
        with pytest.raises(ArtifactError, match=message) as err:
            replace_knowledge(art, bad)
        assert str(err.value).startswith(f"the new knowledge for artifact {art} ") and "staging" not in str(err.value)
    monkeypatch.setattr(knowledge_module, "build_knowledge", lambda *a: {**good, "format": 99})
    dictionary = tmp_path / "dictionary.json"
    dictionary.write_text("{}")
    assert main(["knowledge", "--dictionary", str(dictionary), "--out", str(tmp_path / "k.json"),
                 "--artifact", str(art)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "the new knowledge for artifact" in err_lines[0] and "format 99" in err_lines[0]
    assert {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "dictionary.json", "k.json"]  # no staging left


def test_replace_knowledge_keeps_what_else_the_artifact_folder_holds(default_artifact: Path, tmp_path: Path) -> None:
    """The folder is swapped for the new version: a folder of the operator's notes in it was lost with the old one
    (only files were carried over)."""
    art = tmp_path / "art"
    shutil.copytree(default_artifact, art)
    (art / "old_report.md").write_text("a report of another version")
    (art / "notes").mkdir()
    (art / "notes" / "site.txt").write_text("calibrated on our camera")
    listed = set(load_artifact(art).manifest["files"])
    replace_knowledge(art, json.loads((art / "knowledge.json").read_text()))
    assert (art / "notes" / "site.txt").read_text() == "calibrated on our camera"
    assert (art / "old_report.md").read_text() == "a report of another version"
    assert set(load_artifact(art).manifest["files"]) == listed  # still unlisted: not part of the sealed artifact


def test_the_version_covers_the_knowledge(tmp_path: Path) -> None:
    """Same weights, other knowledge: another version, so no cache mixes their answers."""
    from model.artifact import build_manifest
    from model.config import get_config

    cfg = get_config("keepfit-tiny")
    versions = []
    for knowledge in ('{"a": 1}', '{"a": 2}'):
        folder = tmp_path / knowledge[-2]
        folder.mkdir()
        for name in ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"):
            (folder / name).write_bytes(b"same")
        (folder / "knowledge.json").write_text(knowledge)
        versions.append(build_manifest(folder, name="x", config=cfg)["version"])
    assert versions[0] != versions[1]
