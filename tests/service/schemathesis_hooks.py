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
"""

from __future__ import annotations

import io
from typing import Any

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


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    _drop_not(raw_schema)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    meta = getattr(case, "meta", None)
    positive = meta is None or meta.generation.mode.is_positive
    body = case.body if isinstance(case.body, dict) else {}
    if positive and any(a in body and b in body for a, b in EXCLUDED or [("categories", "task")]):
        return False
    if positive and body.get("frame") not in (None, 0, "0"):
        return False  # a frame other than 0 exists only in multi-frame DICOM; the generated images have one
    return not (positive and _classifier_form(case, body))


def _classifier_form(case: Any, body: dict[str, Any]) -> bool:
    operation = getattr(case, "operation", None)
    path, method = str(getattr(operation, "path", "")), str(getattr(operation, "method", "")).upper()
    return path.rstrip("/").endswith("/classifiers") and method == "POST"
