"""What ``/openapi.json`` promises a generated client, held against what the service does: requests the schema
documents are accepted as documented, and answers carry the statuses and shapes the schema lists.  Each test
is a case a schema-driven fuzz campaign (schemathesis, every check) or a client generated from the schema met."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
from fastapi.testclient import TestClient

from index.store import VectorIndex
from service.app import create_app
from tests.service.helpers import make_settings, request_body

ADMIN = {"X-Admin-Key": "admin-secret"}


@pytest.fixture
def admin_client(default_artifact: Path, index_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(
        default_artifact, index=index_dir, classifiers=tmp_path / "classifiers", admin_keys=["admin-secret"]
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _operation(client: TestClient, path: str, method: str) -> dict[str, Any]:
    spec = client.get("/openapi.json").json()
    return {"components": spec["components"], **spec["paths"][path][method]}


def _request_schema(operation: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"components": operation["components"], **operation["requestBody"]["content"][kind]["schema"]}


def test_a_refit_documents_its_optional_json_body_and_takes_what_it_documents(
    admin_client: TestClient, index_dir: Path
) -> None:
    """``POST /v1/classifiers/{name}/refit`` reads ``{"method": ...}`` but documented no request body: a client
    generated from the schema could not send one, and schema-driven tests never tried it."""
    with VectorIndex.open(index_dir) as idx:
        oct_ids = [r.id for r in idx.records() if r.modality == "OCT"]
    spec = {"name": "refit-me", "modality": "OCT", "method": "linear",
            "categories": [{"label": "first pair", "ids": oct_ids[:2]}, {"label": "second pair", "ids": oct_ids[2:4]}]}
    created = admin_client.post("/v1/classifiers", json=spec, headers=ADMIN)
    assert created.status_code == 201, created.text

    operation = _operation(admin_client, "/v1/classifiers/{name}/refit", "post")
    assert operation["requestBody"]["required"] is False  # no body: refit as created
    schema = _request_schema(operation, "application/json")
    assert "408" in operation["responses"]  # a body that stalls is timed out, as for every other body
    for body, method in (({}, "linear"), ({"method": "prototype"}, "prototype"), ({"method": None}, "prototype")):
        jsonschema.validate(body, schema)  # documented as valid ...
        r = admin_client.post("/v1/classifiers/refit-me/refit", json=body, headers=ADMIN)
        assert r.status_code == 200, (body, r.text)  # ... and accepted
        assert r.json()["method_requested"] == method  # absent or null: the method last asked for
    for body in ({"method": "bogus"}, {"method": ""}, {"method": "prototype", "other": 1}, {"method": 3}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)  # documented as invalid ...
        r = admin_client.post("/v1/classifiers/refit-me/refit", json=body, headers=ADMIN)
        assert r.status_code == 422, (body, r.text)  # ... and refused ("" was taken as no method)
    bare = admin_client.post("/v1/classifiers/refit-me/refit", headers=ADMIN)  # no body at all
    assert bare.status_code == 200 and bare.json()["method_requested"] == "prototype", bare.text


def _patterns(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                found.add(value)
            elif key == "patternProperties" and isinstance(value, dict):
                found.update(value)
            found |= _patterns(value)
    elif isinstance(node, list):
        for item in node:
            found |= _patterns(item)
    return found


def test_text_patterns_mean_the_same_in_every_regex_dialect(api: TestClient) -> None:
    """The published text pattern excluded whitespace with ``\\s``, which Python reads as including \\x1c-\\x1f and
    \\x85 and ECMA-262 (JSON Schema's dialect: a JavaScript client, schemathesis's Rust validator) does not:
    ``{"text": "\\x1f"}`` was valid by the schema and refused (422, "whitespace only") by the service."""
    import re

    from service.schemas import meaningful

    patterns = _patterns(api.get("/openapi.json").json())
    assert patterns
    for pattern in patterns:  # no class whose members depend on who reads the pattern
        assert not re.search(r"(?<!\\)(?:\\\\)*\\[sSdDwWbB]", pattern), pattern
    text_patterns = [p for p in patterns if p.startswith("^[^\\x00")]
    assert text_patterns
    for pattern in text_patterns:  # and the pattern says what the service accepts, character by character
        compiled = re.compile(pattern)
        for code in range(0x3001):
            char = chr(code)
            try:
                accepted = meaningful(char, "text") == char
            except ValueError:
                accepted = False
            assert (compiled.fullmatch(char) is not None) == accepted, hex(code)
    for char in ("\x1c", "\x1f", "\x85"):  # whitespace to the service: refused, and invalid by the schema
        r = api.post("/v1/embed", json={"text": char})
        assert r.status_code == 422 and "whitespace" in r.json()["error"]["message"], r.text
        assert all(re.fullmatch(p, char) is None for p in text_patterns)


def test_index_ids_are_json_schema_integers(admin_client: TestClient, index_dir: Path) -> None:
    """The create schema types ``ids`` as ``integer``, which JSON Schema holds ``4.0`` to be (as ``top_k`` is read):
    ids a client sends from a float column were refused (422), a valid request by the schema.  ``true`` and
    ``"4"`` stay refused: not integers by the schema either."""
    with VectorIndex.open(index_dir) as idx:
        oct_ids = [r.id for r in idx.records() if r.modality == "OCT"]
    schema = _request_schema(_operation(admin_client, "/v1/classifiers", "post"), "application/json")

    def spec(name: str, ids: list[Any]) -> dict[str, Any]:
        return {"name": name, "modality": "OCT",
                "categories": [{"label": "first pair", "ids": ids[:2]}, {"label": "second pair", "ids": ids[2:4]}]}

    as_floats = spec("floats", [float(i) for i in oct_ids[:4]])
    jsonschema.validate(as_floats, schema)
    r = admin_client.post("/v1/classifiers", json=as_floats, headers=ADMIN)
    assert r.status_code == 201, r.text
    as_ints = admin_client.post("/v1/classifiers", json=spec("ints", oct_ids[:4]), headers=ADMIN)
    assert as_ints.status_code == 201, as_ints.text
    assert r.json()["estimate"] == as_ints.json()["estimate"]  # the same examples
    for bad in (True, "4", 1.5):
        body = spec("bad", [bad, *oct_ids[1:4]])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
        refused = admin_client.post("/v1/classifiers", json=body, headers=ADMIN)
        assert refused.status_code == 422 and "ids" in refused.json()["error"]["message"], refused.text


def test_the_fuzz_hooks_drop_only_cases_the_schema_cannot_tell_apart(api: TestClient) -> None:
    """False alarms of a long schemathesis campaign, which the hooks now drop: negative multipart cases whose
    invalid value never reaches the wire (an empty array sends no part; a number in a text field is sent as its
    digits), and positive ``categories`` the service refuses for what they say to the model (two names its
    tokenizer reads as one ``[UNK]``; two spellings of one name).  Cases that are what they claim are kept."""
    pytest.importorskip("schemathesis")
    from tests.service import schemathesis_hooks as hooks

    hooks.before_load_schema(None, api.get("/openapi.json").json())

    class Case:
        def __init__(self, path: str, body: dict[str, Any]) -> None:
            self.operation = type("Operation", (), {"method": "POST", "path": path})()
            self.media_type, self.body = "multipart/form-data", body

    def as_sent_valid(path: str, body: dict[str, Any]) -> bool:
        return hooks._valid_as_sent(Case(path, body), body)

    image = b"\x89PNG"
    assert as_sent_valid("/v1/classify", {"image": image, "explain_top": []})  # no part: valid as sent
    assert as_sent_valid("/v1/search", {"image": image, "label": 6.8e16})  # "6.8e+16", a valid label
    assert as_sent_valid("/v1/search", {"image": image, "top_k": "5"})  # what a form sends for 5
    assert not as_sent_valid("/v1/search", {"image": image, "top_k": "abc"})
    assert not as_sent_valid("/v1/classify", {"image": image, "modality": 5})
    assert not as_sent_valid("/v1/embed", {"image": image, "other": 1})
    assert not as_sent_valid("/v1/classify", {"top_k": 1})  # no image
    assert hooks._categories_refused(["9ĜĈāİ\U000eacd3", "Å\U000bb72eĳ03"])  # both one [UNK]
    assert hooks._categories_refused(["Drusen-like dots", "drusen like dots."])
    assert not hooks._categories_refused(["normal", "glaucoma", "drusen"])


def test_a_trailing_slash_is_a_404_in_the_error_envelope(admin_client: TestClient) -> None:
    """``/v1/categories/`` was an undocumented 307 with an empty body to an absolute ``http://`` URL (wrong behind a
    TLS proxy): it is the usual 404 ``not_found``, as for any path the API does not have."""
    for method, path in (("GET", "/v1/categories/"), ("POST", "/v1/classify/"), ("GET", "/healthz/")):
        r = admin_client.request(method, path, follow_redirects=False)
        assert r.status_code == 404, (method, path, r.status_code, r.headers.get("location"))
        assert r.json()["error"]["code"] == "not_found"


def _examples(node: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], Any]]:
    """Every example the schema shows (``/docs`` displays them, mock servers serve them), with the schema it is
    an example of: a media type's ``example``/``examples`` and a schema's ``examples`` list."""
    if isinstance(node, dict):
        if isinstance(node.get("schema"), dict):
            if "example" in node:
                yield where, node["schema"], node["example"]
            for name, entry in (node.get("examples") or {}).items():
                if isinstance(entry, dict) and "value" in entry:
                    yield (*where, name), node["schema"], entry["value"]
        elif isinstance(node.get("examples"), list) and any(k in node for k in ("type", "properties", "$ref", "anyOf")):
            schema = {k: v for k, v in node.items() if k != "examples"}
            for i, example in enumerate(node["examples"]):
                yield (*where, i), schema, example
        for key, value in node.items():
            yield from _examples(value, (*where, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _examples(value, (*where, i))


def test_every_example_in_the_schema_is_valid_against_its_schema(default_artifact: Path) -> None:
    """The classify and search answers' examples lacked required fields (`task`, `label`, a hit's `sha256` and
    `same_image`): FastAPI leaves null values out of the schema, and two were added to the answers later."""
    settings = make_settings(default_artifact, api_keys=["k"], admin_keys=["a"])
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json").json()
    found = list(_examples(spec["paths"], ("paths",))) + list(_examples(spec["components"], ("components",)))
    assert len(found) > 30  # the walk really found the schema's examples
    bad = []
    for where, schema, example in found:
        validator = jsonschema.Draft202012Validator({"components": spec["components"], **schema})
        bad += [f"{'/'.join(map(str, where))}: {e.message[:160]}" for e in validator.iter_errors(example)]
    assert not bad, bad


def test_every_request_body_is_one_named_schema_shared_by_the_aliases(api: TestClient) -> None:
    """Written inline, each body made a model of its own in a generated client: `ClassifyBody` beside
    `ClassifyUnversionedBody` (the same form), `SearchJsonSearchRequest`, and an enum of each of their fields."""
    spec = api.get("/openapi.json").json()
    refs: dict[tuple[str, str], str] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for kind, media in (operation.get("requestBody") or {}).get("content", {}).items():
                assert set(media["schema"]) == {"$ref"}, (method, path, kind)
                refs[(path, kind)] = media["schema"]["$ref"]
                assert media["schema"]["$ref"].rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert refs[("/classify", "multipart/form-data")] == refs[("/v1/classify", "multipart/form-data")]
    assert refs[("/search", "application/json")] == refs[("/v1/search", "application/json")]
    assert refs[("/v1/search", "application/json")] == "#/components/schemas/SearchRequest"
    assert len(set(refs.values())) == 8


def test_the_create_form_declares_no_pattern_of_field_names(api: TestClient) -> None:
    """The classifier form's ``patternProperties`` (``^examples\\..+$``, binary) became an index signature in
    openapi-typescript (``[key: string]: string``) that every other field of the form (a boolean, an array)
    conflicted with: ``tsc --strict`` refused every body a TypeScript client could build.  The pattern of names
    is told in the ``examples`` description instead, and the service still takes such fields."""
    spec = api.get("/openapi.json").json()
    assert "patternProperties" not in json.dumps(spec)
    form = request_body(spec, "/v1/classifiers", "multipart/form-data")
    assert form["additionalProperties"] is False  # every other unknown field is refused (422), as documented
    assert "`examples.<category label>`" in form["properties"]["examples"]["description"]


def test_no_two_fields_spell_out_an_enum_a_generator_would_name_alike(api: TestClient) -> None:
    """Inline enums were named by generators after their field, numbered where two fields shared a name or a field
    was nullable (``Modality1``, ``Decision1``, ``State1``, ``Code2``, ``SearchRequestModalityType0``): each is a
    named schema now, referred to by every field that takes it, with the values the service accepts."""
    from model.config import MODALITIES
    from service.app import NAMED_ENUMS
    from service.schemas import Decision, Modality

    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    inline: list[tuple[str, str]] = []  # (field, where) of each enum still spelt out in a field
    for owner, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            for option in [prop, *prop.get("anyOf", [])]:
                if "enum" in option:
                    assert option is prop, f"{owner}.{field}: a nullable field's enum is not named"
                    inline.append((field, owner))
    fields = [field for field, _ in inline]
    assert len(fields) == len(set(fields)), sorted(inline)
    for name, (_, places) in NAMED_ENUMS.items():
        for owner, field in places:
            prop = schemas[owner]["properties"][field]
            refs = [option.get("$ref") for option in [prop, *prop.get("anyOf", [])]]
            assert f"#/components/schemas/{name}" in refs, (name, owner, field)
    assert schemas["Modality"]["enum"] == list(get_args(Modality)) == ["auto", *MODALITIES]
    assert schemas["DecisionChoice"]["enum"] == list(get_args(Decision))
    assert schemas["SearchModality"]["enum"] == list(MODALITIES)  # no index: the model's
    assert schemas["TaskName"]["enum"] == sorted(api.get("/v1/categories").json()["tasks"])


def test_an_enum_whose_fields_disagree_is_left_inline_not_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """Should a deployment's settings give two fields of one named enum different values, /openapi.json is still
    served: those fields keep their enums inline (as before they were named), and the log says which."""
    from service.app import _named_enums

    schema = {"components": {"schemas": {
        "ClassifyForm": {"properties": {"modality": {"type": "string", "enum": ["auto", "CFP"]}}},
        "CreateClassifierRequest": {"properties": {"modality": {"type": "string", "enum": ["auto", "OCT"]}}},
        "SearchRequest": {"properties": {"modality": {"anyOf": [{"type": "string", "enum": ["CFP"]}, {"type": "null"}]}}},
    }}}
    with caplog.at_level("WARNING", logger="service.app"):
        _named_enums(schema)
    schemas = schema["components"]["schemas"]
    assert "Modality" not in schemas and schemas["ClassifyForm"]["properties"]["modality"]["enum"] == ["auto", "CFP"]
    assert "left unnamed" in caplog.text and "Modality" in caplog.text
    # the others are named as usual
    assert schemas["SearchModality"]["enum"] == ["CFP"]
    assert schemas["SearchRequest"]["properties"]["modality"]["anyOf"][0] == {"$ref": "#/components/schemas/SearchModality"}
