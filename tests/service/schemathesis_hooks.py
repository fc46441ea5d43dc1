"""Schemathesis hooks for this API (``SCHEMATHESIS_HOOKS=tests.service.schemathesis_hooks``).

- The image fields are ``format: binary`` in the schema, which cannot say "a decodable image of at least 32x32
  pixels"; random bytes are answered 400 ``invalid_image``, correctly, and would be reported as a valid request
  rejected.  This generates real images instead (PNG, JPEG, TIFF; RGB, greyscale, 16-bit; 32 to 200 px a
  side), so that positive tests exercise the model path.
- ``POST /v1/classify`` says which fields exclude each other (``categories`` or ``task``; a ``classifier`` with
  none of ``categories``, ``task``, ``modality``, ``explain``, ``decision``) as ``not: {anyOf: [{required: [a, b]}...]}``.
  Schemathesis's coverage phase cannot evaluate a ``not`` beside a binary field (it stops with "Unsupported
  type: 'Binary'"), so the hook removes that keyword after loading and drops positive cases that send an
  excluded pair, which is what the keyword says.
- ``frame``: a frame other than 0 exists only in a multi-frame DICOM object, which the schema cannot tell from
  the upload; the generated images have one frame, so positive cases with another frame (answered 422, as
  documented) are dropped.
- ``POST /v1/classifiers``: whether a well-formed request can be fitted depends on data the schema cannot
  describe (at least two categories counted across the JSON part and the ``examples.<label>`` file fields, at
  least two examples per category, ids that exist in the index, examples of one modality), and the service
  answers such requests 422 / 404 / 409 with a message, as documented.  Positive cases of that operation are
  dropped here (its negative cases still run); ``tests/service/test_classifiers.py`` covers the accepted path
  with real images.
- A form carries text: a negative multipart case whose invalid value does not reach the wire as such is a valid
  request there, and accepted rightly.  An empty array or object, or a null, sends no part at all; a number in a
  text field is sent as its digits, which that field may take; a one-item array is one part.  Negative cases whose
  form, as sent, is valid by the schema are dropped (schemathesis reported them as "schema-violating request
  accepted").
- Category names the service refuses for what they say to the model, which a schema cannot describe (README,
  422): two names its tokenizer reads as the same word pieces (``9ĜĈāİ`` and ``Å03`` are both one ``[UNK]``),
  that differ only in case, hyphens or a closing full stop, or a word mixing Latin, Cyrillic and Greek letters.
  Positive ``categories`` cases with such names are dropped (with the service's own rules and the artifact's
  tokenizer; where those cannot be imported, as in a throwaway environment with schemathesis alone, nothing is).
"""

from __future__ import annotations

import functools
import io
import json
import os
from pathlib import Path
from typing import Any

import jsonschema_rs
import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def images(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(32, 200))
    height = draw(st.integers(32, 200))
    mode = draw(st.sampled_from(["RGB", "L", "I;16"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "TIFF"] if mode != "I;16" else ["PNG", "TIFF"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
    else:
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


schemathesis.openapi.format("binary", images())


EXCLUDED: list[tuple[str, str]] = []  # the pairs the schema's ``not`` forbade, filled while loading


def _drop_not(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and "categories" in props and "task" in props:
            for rule in (node.pop("not", None) or {}).get("anyOf", []):
                pair = tuple(rule.get("required", []))
                if len(pair) == 2 and pair not in EXCLUDED:
                    EXCLUDED.append(pair)  # type: ignore[arg-type]
        for value in node.values():
            _drop_not(value)
    elif isinstance(node, list):
        for item in node:
            _drop_not(item)


FORM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {}  # (METHOD, path) -> its multipart body's schema


def _form_schemas(raw_schema: dict[str, Any]) -> None:
    for path, item in (raw_schema.get("paths") or {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            content = (operation.get("requestBody") or {}).get("content") or {}
            form = (content.get("multipart/form-data") or {}).get("schema")
            if isinstance(form, dict) and str(form.get("$ref", "")).startswith("#/components/schemas/"):
                form = ((raw_schema.get("components") or {}).get("schemas") or {}).get(form["$ref"].rsplit("/", 1)[1])
            if isinstance(form, dict):
                # with the document's components beside it: its fields refer to the named enums there
                FORM_SCHEMAS[(method.upper(), path)] = {"components": raw_schema.get("components") or {}, **form}


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    _drop_not(raw_schema)
    _form_schemas(raw_schema)


def _sent(field: Any, value: Any) -> Any:
    """``value`` as a form sends it and the service reads it back for ``field`` (``_GONE``: no part at all)."""
    field = field if isinstance(field, dict) else {}
    kind = field.get("type")
    if value is None or value == [] or value == {}:
        return _GONE
    if kind == "array":  # a repeated field: each item a part, one item read as a list of one
        items = [_sent(field.get("items"), item) for item in (value if isinstance(value, list) else [value])]
        return [item for item in items if item is not _GONE] or _GONE
    if isinstance(value, list):
        return _sent(field, value[0]) if len(value) == 1 else value  # one part; several: a repeated field
    if field.get("format") == "binary":
        return "<file>"
    if kind == "object" and isinstance(value, dict):
        return value  # a JSON part (``spec``), read as JSON
    text = json.dumps(value) if isinstance(value, dict) else (
        ("true" if value else "false") if isinstance(value, bool) else str(value)
    )
    if kind == "integer" and text.isascii() and text.isdigit():
        return int(text)
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


_GONE = object()


def _valid_as_sent(case: Any, body: dict[str, Any]) -> bool:
    """Whether a multipart body is valid once serialised as a form: text parts, no part for an empty value."""
    operation = getattr(case, "operation", None)
    if not str(getattr(case, "media_type", "") or "").startswith("multipart/form-data") or operation is None:
        return False
    schema = FORM_SCHEMAS.get((str(operation.method).upper(), str(operation.path)))
    if schema is None:
        return False
    fields = schema.get("properties") or {}
    sent = {name: _sent(fields.get(name), value) for name, value in body.items()}
    wire = {name: value for name, value in sent.items() if value is not _GONE}
    if id(schema) not in _VALIDATORS:
        _VALIDATORS[id(schema)] = jsonschema_rs.validator_for(schema)
    return bool(_VALIDATORS[id(schema)].is_valid(wire))


_VALIDATORS: dict[int, Any] = {}


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    meta = getattr(case, "meta", None)
    positive = meta is None or meta.generation.mode.is_positive
    body = case.body if isinstance(case.body, dict) else {}
    if positive and any(a in body and b in body for a, b in EXCLUDED or [("categories", "task")]):
        return False
    if positive and body.get("frame") not in (None, 0, "0"):
        return False  # a frame other than 0 exists only in multi-frame DICOM; the generated images have one
    if positive and _categories_refused(body.get("categories")):
        return False  # names the service refuses for what they say to the model (documented 422s)
    if not positive and _valid_as_sent(case, body):
        return False  # what the form carries is valid: the invalid value does not reach the wire
    return not (positive and _classifier_form(case, body))


def _classifier_form(case: Any, body: dict[str, Any]) -> bool:
    operation = getattr(case, "operation", None)
    path, method = str(getattr(operation, "path", "")), str(getattr(operation, "method", "")).upper()
    return path.rstrip("/").endswith("/classifiers") and method == "POST"


@functools.cache
def _category_rules() -> tuple[Any, Any, Any] | None:
    """The service's rules for category names (``mixed_script_word``, ``loose_name``) and the artifact's tokenizer;
    None where they cannot be loaded."""
    try:
        from model.tokenizer import Tokenizer
        from service.engine import loose_name, mixed_script_word
    except ImportError:
        return None
    default = Path(__file__).resolve().parents[2] / "artifacts" / "keepfit-v2-small"
    artifact = Path(os.environ.get("KEEPFIT_ARTIFACT") or default)
    try:
        manifest = json.loads((artifact / "manifest.json").read_text())
        tokenizer = Tokenizer.from_file(artifact / "tokenizer.json", int(manifest.get("context_length", 77)))
    except Exception:  # an artifact missing or unreadable: filter nothing
        return None
    return mixed_script_word, loose_name, tokenizer


def _categories_refused(categories: Any) -> bool:
    if not isinstance(categories, list) or len(categories) < 2:
        return False
    rules = _category_rules()
    if rules is None:
        return False
    mixed_script_word, loose_name, tokenizer = rules
    names = [" ".join(str(c).split()) for c in categories]
    if any(mixed_script_word(name) for name in names):
        return True
    loose = [loose_name(name) for name in names]
    pieces = [tuple(tokenizer.pieces(name)) for name in names]
    return len(set(loose)) < len(names) or len(set(pieces)) < len(names)
