"""Accessibility of the reference front end (WCAG 2.1 AA), measured in Debian's Chromium against a live
``keepfit serve``, as a clinic's accessibility reviewer would:

- keyboard only: every control is reached with Tab in page order, shows a visible focus indicator (its computed
  outline, 3:1 against what surrounds it), works with Enter/Space, and nothing traps the focus nor drops it to the
  top of the page when the control it was on goes away (2.1.1, 2.1.2, 2.4.3, 2.4.7, 1.4.11);
- names and roles from Chromium's own accessibility tree: every control and image named, repeated buttons and links
  named apart, toggles with their state, headings an outline, ``<html lang>`` (1.1.1, 1.3.1, 2.4.6, 3.1.1, 4.1.2);
- results and errors announced through live regions, the probabilities and the shown heat map in words (1.4.1, 4.1.3);
- contrast computed in the page for every visible text, initially, after a classification and in the error and
  classifier states, and of the edges of text fields, selects and the drop zone (1.4.3, 1.4.11);
- reflow at 320 and 768 CSS px, reduced motion, a refused file's error tied to the drop zone (1.4.10, 2.3.3, 3.3.1).

The classifier endpoints are answered by the test in the teach-panel checks (fitting a real one takes minutes on two
cores; the page's own code is what is measured).  Measurements go to ``test-output/frontend/accessibility.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.frontend.harness import API_KEY, MAX_UPLOAD_BYTES, ROOT, PageRecorder, Service, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]

REPORT = ROOT / "test-output" / "frontend" / "accessibility.json"

# Colour arithmetic in the page: an element's colours composited over its ancestors' backgrounds, with their
# opacity, from the white canvas (exact for the flat colours this page uses).
COLOUR_JS = r"""
const parse = (s) => { const m = /rgba?\(([^)]+)\)/.exec(s || ''); if (!m) return {r: 0, g: 0, b: 0, a: 0};
  const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
const over = (c, b) => ({r: c.r * c.a + b.r * (1 - c.a), g: c.g * c.a + b.g * (1 - c.a), b: c.b * c.a + b.b * (1 - c.a), a: 1});
const mix = (b, c, o) => ({r: b.r * (1 - o) + c.r * o, g: b.g * (1 - o) + c.g * o, b: b.b * (1 - o) + c.b * o, a: 1});
const WHITE = {r: 255, g: 255, b: 255, a: 1};
const chain = (el) => { const out = []; for (let n = el; n && n.nodeType === 1; n = n.parentElement) out.unshift(n); return out; };
// the colour of a pixel of `nodes`' last element: its background, or `top` (its text) over it
const paint = (nodes, i, backdrop, top) => {
  if (i === nodes.length) return top ? over(top, backdrop) : backdrop;
  const cs = getComputedStyle(nodes[i]);
  const inner = paint(nodes, i + 1, over(parse(cs.backgroundColor), backdrop), top);
  const o = parseFloat(cs.opacity);
  return o < 1 ? mix(backdrop, inner, o) : inner;
};
const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
const round = (x) => Math.round(x * 100) / 100;
const shown = (el) => el.checkVisibility({visibilityProperty: true}) && !el.closest('.sr-only')
  && el.getBoundingClientRect().width > 1;
const describe = (el) => { let s = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '');
  if (!el.id && typeof el.className === 'string' && el.className.trim()) s += '.' + el.className.trim().split(/\s+/).join('.');
  const owner = el.parentElement && el.parentElement.closest('[id]'); return owner ? `#${owner.id} ${s}` : s; };
"""

# Every visible text (own text nodes, field values and placeholders, a select's choice) against its background.
# Inactive controls are exempt (1.4.3): disabled or aria-disabled ones, and a disabled fieldset but for its legend.
CONTRAST_JS = (
    "() => {"
    + COLOUR_JS
    + r"""
  const inactive = (el) => !!el.closest('button:disabled, input:disabled, select:disabled, [aria-disabled=true]')
    || (!!el.closest('fieldset:disabled') && !el.closest('legend'));
  const rows = [];
  const measure = (el, text, colour, what) => {
    const cs = getComputedStyle(el);
    const nodes = chain(el);
    const bg = paint(nodes, 0, WHITE, null);
    const fg = paint(nodes, 0, WHITE, parse(colour));
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (parseInt(cs.fontWeight, 10) >= 700 && size >= 18.66);
    rows.push({el: describe(el) + what, text: text.replace(/\s+/g, ' ').slice(0, 60), ratio: round(ratio(fg, bg)),
               need: large ? 3 : 4.5, px: size, colour, background: `rgb(${Math.round(bg.r)}, ${Math.round(bg.g)}, ${Math.round(bg.b)})`});
  };
  for (const el of document.querySelectorAll('body *')) {
    if (['SCRIPT', 'OPTION', 'DATALIST', 'CANVAS', 'IMG'].includes(el.tagName) || !shown(el) || inactive(el)) continue;
    const own = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join('').trim();
    if (own) measure(el, own, getComputedStyle(el).color, '');
    if (el.matches('input[type=text], input[type=search], input[type=url], input[type=password]')) {
      if (el.value) measure(el, el.value, getComputedStyle(el).color, ' (value)');
      else if (el.placeholder) measure(el, el.placeholder, getComputedStyle(el, '::placeholder').color, '::placeholder');
    }
    if (el.tagName === 'SELECT' && el.selectedOptions[0]) measure(el, el.selectedOptions[0].text, getComputedStyle(el).color, ' (choice)');
  }
  return rows.sort((a, b) => a.ratio / a.need - b.ratio / b.need);
}"""
)

# The edges that identify a control (text fields, selects, the drop zone) against the background around them.
BOUNDARY_JS = (
    "() => {"
    + COLOUR_JS
    + r"""
  return [...document.querySelectorAll('input[type=text], input[type=search], input[type=url], input[type=password], select, #drop-zone')]
    .filter((el) => shown(el) && !el.disabled)
    .map((el) => { const around = paint(chain(el.parentElement), 0, WHITE, null);
      const cs = getComputedStyle(el);
      return {el: el.id || el.tagName.toLowerCase(), border: cs.borderTopColor, width: cs.borderTopWidth,
              ratio: round(ratio(over(parse(cs.borderTopColor), around), around))}; })
    .sort((a, b) => a.ratio - b.ratio);
}"""
)

# The focused element (pushed to window.__stops for the order check) and its focus indicator.
FOCUS_JS = (
    "() => {"
    + COLOUR_JS
    + r"""
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  (window.__stops = window.__stops || []).push(el);
  const cs = getComputedStyle(el);
  const outlined = cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 1;
  const around = paint(chain(el.parentElement), 0, WHITE, null);
  return {id: el.id, el: describe(el), name: (el.getAttribute('aria-label') || el.textContent || '').trim().slice(0, 50),
          outline: `${cs.outlineStyle} ${cs.outlineWidth} ${cs.outlineColor}`, visible: outlined,
          ratio: outlined ? round(ratio(over(parse(cs.outlineColor), around), around)) : 0};
}"""
)

# What Tab should reach: every visible, enabled, focusable element (of a radio group, the checked radio only).
REACHABLE_JS = r"""
() => {
  const candidates = document.querySelectorAll('a[href], button, input, select, textarea, summary, [tabindex]');
  const missing = [];
  for (const el of candidates) {
    if (el.tabIndex < 0 || el.disabled || el.type === 'file' || !el.checkVisibility({visibilityProperty: true})) continue;
    if (el.type === 'radio' && !el.checked && document.querySelector(`input[type=radio][name="${el.name}"]:checked`)) continue;
    if (!(window.__stops || []).includes(el)) missing.push(el.id || el.outerHTML.slice(0, 80));
  }
  const stops = window.__stops || [];
  const backwards = stops.filter((el, i) => i > 0 && !(stops[i - 1].compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING));
  return {missing, backwards: backwards.map((el) => el.id || el.outerHTML.slice(0, 80)),
          positive: [...document.querySelectorAll('[tabindex]')].filter((el) => el.tabIndex > 0).map((el) => el.id)};
}
"""

# Horizontal overflow of the page, and controls or text pushed outside the viewport or cut by a clipping box.
REFLOW_JS = r"""
() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('button, input:not([type=file]), select, a[href], [role=button], h1, h2, h3, p, li, label, legend, figcaption')) {
    if (!el.checkVisibility({visibilityProperty: true}) || el.closest('.sr-only')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    let why = r.left < -0.5 || r.right > width + 0.5 ? `outside the viewport (${Math.round(r.left)}..${Math.round(r.right)} of ${width})` : null;
    for (let n = el.parentElement; !why && n && n !== document.body; n = n.parentElement) {
      if (getComputedStyle(n).overflowX === 'visible') continue;
      const p = n.getBoundingClientRect();
      if (r.left < p.left - 0.5 || r.right > p.right + 0.5) why = `cut by ${n.id || n.className}`;
    }
    if (why) out.push(`${el.id || el.tagName.toLowerCase() + '.' + el.className}: ${why}`);
  }
  return {scrollWidth: document.documentElement.scrollWidth, clientWidth: width, clipped: out};
}
"""

INTERACTIVE_ROLES = {
    "button", "link", "textbox", "searchbox", "combobox", "checkbox", "radio", "slider", "spinbutton",
    "image", "DisclosureTriangle",
}


# ------------------------------------------------------------------------------------------------ helpers
def _record(key: str, value: Any) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=1))


def _active(page: Any) -> str:
    """The focused element, as a short description; 'BODY' when the focus fell to the top of the page."""
    return page.evaluate(
        "(() => { const a = document.activeElement; if (!a || a === document.body) return 'BODY';"
        " return a.id || `${a.tagName.toLowerCase()}:${a.getAttribute('aria-label') || a.textContent.trim()}`; })()"
    )


def _focused(page: Any, css: str) -> bool:
    return bool(page.evaluate(f"document.activeElement.matches({json.dumps(css)})"))


def _announced(page: Any, words: str) -> None:
    """`words` reach the page's polite status region (#page-status)."""
    wait_for(page, f"(document.getElementById('page-status') || {{}}).textContent?.includes({json.dumps(words)})", 10)


def _ax_nodes(page: Any) -> list[dict[str, Any]]:
    """Chromium's accessibility tree (the names, roles and states a screen reader gets), ignored nodes left out."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        cdp.detach()
    out = []
    for n in nodes:
        if n.get("ignored"):
            continue
        props = {p["name"]: p["value"].get("value") for p in n.get("properties", [])}
        out.append({
            "role": n.get("role", {}).get("value", ""),
            "name": str(n.get("name", {}).get("value", "")),
            "description": str(n.get("description", {}).get("value", "")),
            "props": props,
        })
    return out


def _ax_role(page: Any, selector: str) -> str:
    """The role Chromium's accessibility tree gives the first element ``selector`` matches."""
    cdp = page.context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        ax = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node, "fetchRelatives": False})["nodes"]
    finally:
        cdp.detach()
    return str(ax[0].get("role", {}).get("value", ""))


def _ax_names(page: Any, selector: str) -> list[dict[str, Any]]:
    """Role, name, whether it is ignored (out of the accessibility tree: hidden, display:none) and states of every
    element ``selector`` matches, in document order, as Chromium's accessibility tree gives them."""
    cdp = page.context.new_cdp_session(page)
    out = []
    try:
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        for node in cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"]:
            ax = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node, "fetchRelatives": False})
            ax = ax["nodes"][0]
            out.append({
                "role": str(ax.get("role", {}).get("value", "")),
                "name": str(ax.get("name", {}).get("value", "")),
                "ignored": bool(ax.get("ignored")),
                "props": {p["name"]: p["value"].get("value") for p in ax.get("properties", [])},
            })
    finally:
        cdp.detach()
    return out


# The words an element shows, in order: its text but for what only screen readers get (.sr-only)
SHOWN_WORDS_JS = r"""els => els.map((el) => { const words = [];
  const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) if (!n.parentElement.closest('.sr-only')) words.push(n.textContent);
  return words.join(' '); })"""


def _words(text: str) -> str:
    """Text compared as speech input hears it: case, spacing and punctuation between words aside."""
    return " ".join(re.sub(r"[^\w%.<>-]+", " ", text.lower()).split())


def _classify_by_keyboard(page: Any, image: Path, key: str = "Enter") -> None:
    """The drop zone's keyboard path: focus it, press a key, pick the file in the chooser it opens."""
    page.focus("#drop-zone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press(key)
    chooser.value.set_files(str(image))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")


def _search(page: Any, text: str) -> None:
    page.fill("#search-query", text)
    page.focus("#search-query")
    page.keyboard.press("Enter")
    page.wait_for_selector("#search-results li .teach-add")
    wait_for(page, "!document.body.dataset.busy")


def _tab_through(page: Any, limit: int = 400) -> list[dict[str, Any]]:
    """Tab from the top of the page until the focus leaves it; fails if it never does (a trap)."""
    page.evaluate("window.scrollTo(0, 0); window.__stops = []")
    page.mouse.click(1, 1)  # the header's corner: sequential navigation starts at the top
    stops = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        info = page.evaluate(FOCUS_JS)
        if info is None:
            return stops
        stops.append(info)
    pytest.fail(f"Tab never left the page in {limit} presses (a focus trap?); last: {stops[-3:]}")


def _ordered_subsequence(items: list[str], wanted: list[str]) -> list[str]:
    """The names in `wanted` not found, in that order, in `items`."""
    it = iter(items)
    return [w for w in wanted if w not in it]


class FakeClassifiers:
    """The classifier endpoints, answered by the test: a list, a fit and a delete."""

    def __init__(self, page: Any, stored: list[dict[str, Any]] | None = None) -> None:
        self.stored = list(stored or [])
        page.route(re.compile(r".*/v1/classifiers(/[^?]*)?(\?.*)?$"), self._answer)

    @staticmethod
    def row(name: str, labels: tuple[str, ...] = ("referable", "not referable")) -> dict[str, Any]:
        return {
            "name": name, "modality": "CFP", "method": "prototype", "version": 1, "examples": 2 * len(labels),
            "categories": [{"label": label, "examples": 2} for label in labels], "usable": True,
            "estimate": {"balanced_accuracy": 0.75, "scheme": "leave-one-out", "n": 2 * len(labels), "chance": 0.5},
        }

    def _answer(self, route: Any) -> None:
        request = route.request
        tail = request.url.split("/v1/classifiers", 1)[1].split("?")[0]
        if request.method == "GET" and not tail:
            body: Any = {"classifiers": self.stored}
        elif request.method == "POST" and not tail:
            form = request.post_data_buffer or b""
            name = re.search(rb'name="name"\r\n\r\n([^\r]*)', form)
            body = self.row(name.group(1).decode() if name else "fitted")
            self.stored.append(body)
        elif request.method == "DELETE":
            gone = tail.strip("/")
            self.stored = [c for c in self.stored if c["name"] != gone]
            body = {"deleted": gone, "version": 1}
        else:
            route.continue_()
            return
        route.fulfill(status=201 if request.method == "POST" else 200, content_type="application/json",
                      body=json.dumps(body))


# ------------------------------------------------------------------------------------------------- tests
def test_every_control_is_reached_by_tab_in_page_order_with_a_visible_focus_and_no_trap(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    page.on("filechooser", lambda _: None)  # Playwright intercepts choosers only once something listens
    _classify_by_keyboard(page, real_image_paths["CFP"][0])
    _search(page, "hard exudates")
    page.fill("#teach-label", "referable")
    page.press("#teach-label", "Enter")
    page.focus("#search-results .teach-add >> nth=0")
    page.keyboard.press("Enter")
    page.focus("#settings summary")
    page.keyboard.press("Enter")  # the connection settings open from the keyboard too
    assert page.evaluate("document.getElementById('settings').open")

    stops = _tab_through(page)
    ids = [s["id"] for s in stops if s["id"]]
    missed = _ordered_subsequence(ids, [
        "api-base", "api-key", "forget-key", "drop-zone", "modality", "classifier-picker", "category-input",
        "category-add", "category-reset", "classify-again", "find-similar", "overlay-toggle", "overlay-opacity",
        "teach-name", "teach-modality", "admin-key", "teach-label", "teach-add", "search-query", "search-modality",
        "docs-link",
    ])
    assert not missed, f"not reached by Tab, or out of order: {missed}; stops: {ids}"
    reach = page.evaluate(REACHABLE_JS)
    assert not reach["missing"], f"focusable but never reached by Tab: {reach['missing']}"
    assert not reach["backwards"] and not reach["positive"], reach  # the page's order: no tabindex > 0
    # every stop shows where the focus is: an outline, 3:1 against what surrounds it (2.4.7, 1.4.11)
    hidden = [s for s in stops if not s["visible"]]
    faint = [s for s in stops if s["visible"] and s["ratio"] < 3]
    worst = min(stops, key=lambda s: s["ratio"])
    _record("focus_indicators", {"stops": len(stops), "worst": worst, "without": hidden})
    assert not hidden, f"no visible focus indicator: {hidden}"
    assert not faint, f"focus indicator under 3:1: {faint}"
    # and the focus leaves the page at its end and comes back with Shift+Tab: nothing traps it
    page.keyboard.press("Shift+Tab")
    assert _active(page) == "docs-link"


def test_controls_work_from_the_keyboard_and_keep_the_focus(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    page.on("filechooser", lambda _: None)
    image = real_image_paths["CFP"][0]
    # the drop zone: Enter and Space open the file chooser; the focus stays on it
    _classify_by_keyboard(page, image, "Enter")
    _classify_by_keyboard(page, image, " ")
    assert _active(page) == "drop-zone"

    # Classify again: the focus stays on the button while it runs and after (a disabled button dropped it)
    page.focus("#classify-again")
    page.keyboard.press("Enter")
    assert _active(page) == "classify-again"
    wait_for(page, "!document.body.dataset.busy")
    assert _active(page) == "classify-again"
    assert page.get_attribute("#announce", "role") == "status"
    assert page.inner_text("#announce").startswith("Diagnosis ready: ")

    # a category removed with its × button: the focus goes to the next chip's button, and the change is announced
    chips = page.eval_on_selector_all("#category-list li span", "els => els.map(e => e.textContent)")
    page.focus("#category-list li:nth-child(2) button")
    page.keyboard.press("Enter")
    assert _active(page) == f"button:remove {chips[2]}"
    _announced(page, f"Removed {chips[1]}")
    page.focus("#category-input")
    page.keyboard.type("glaucoma suspect")
    page.keyboard.press("Enter")
    assert _active(page) == "category-input" and "glaucoma suspect" in page.inner_text("#category-list")
    _announced(page, "Added glaucoma suspect")
    page.focus("#category-reset")
    page.keyboard.press("Enter")  # back to the defaults, for the cached answer below
    page.focus("#classify-again")
    page.keyboard.press("Enter")
    wait_for(page, "!document.body.dataset.busy")

    # heat map: Space toggles it, arrows set its opacity
    page.focus("#overlay-toggle")
    page.keyboard.press(" ")
    assert not page.is_checked("#overlay-toggle") and page.is_hidden("#overlay")
    page.keyboard.press(" ")
    assert page.is_checked("#overlay-toggle") and page.is_visible("#overlay")
    page.focus("#overlay-opacity")
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("document.getElementById('overlay').style.opacity") == "0.49"

    # predictions: Enter and Space choose the heat map shown; the state is exposed and the focus stays
    page.focus("#predictions li.explained >> nth=1 >> button")
    page.keyboard.press("Enter")
    assert page.get_attribute("#predictions li.explained >> nth=1 >> button", "aria-pressed") == "true"
    page.focus("#predictions li.explained >> nth=2 >> button")
    page.keyboard.press(" ")
    assert page.get_attribute("#predictions li.explained >> nth=2 >> button", "aria-pressed") == "true"
    assert page.get_attribute("#predictions li.explained >> nth=1 >> button", "aria-pressed") == "false"
    assert _active(page).startswith("button:")

    # search: Enter in the box; a result card pressed is replaced by the new results: the focus goes to their caption
    _search(page, "hard exudates")
    assert _active(page) == "search-query"
    page.focus("#search-results li button >> nth=1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#search-query-image:not([hidden])")
    wait_for(page, "!document.body.dataset.busy")
    assert _active(page) == "search-query-image", "the focus fell to the top of the page"
    page.focus("#find-similar")
    page.keyboard.press("Enter")
    wait_for(page, "document.getElementById('search-query-image').textContent.includes('your image')")
    wait_for(page, "!document.body.dataset.busy")
    assert _active(page) == "search-query-image"
    # "+ example" answers Enter and Space like a button
    page.fill("#teach-label", "exudates")
    page.press("#teach-label", "Enter")
    page.focus("#search-results .teach-add >> nth=0")
    page.keyboard.press("Enter")
    page.focus("#search-results .teach-add >> nth=1")
    page.keyboard.press(" ")
    assert page.inner_text("#teach-categories .count").strip() == "2 examples"
    _announced(page, "added to exudates: 2 examples")
    # a similar-images search that fails: the card pressed is gone with the results; the focus goes to the search box
    page.route("**/v1/search", lambda route: route.abort())
    page.focus("#search-results li button >> nth=2")
    page.keyboard.press("Enter")
    wait_for(page, "document.getElementById('message').dataset.code === 'network'")
    assert _active(page) == "search-query", "the focus fell to the top of the page"
    page.unroute("**/v1/search")


def test_the_teach_panel_works_from_the_keyboard_and_names_its_buttons(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    page.on("filechooser", lambda _: None)
    page.on("dialog", lambda dialog: dialog.accept())
    FakeClassifiers(page, [FakeClassifiers.row("older-one")])
    page.reload()
    wait_for(page, "document.querySelectorAll('#classifier-list li[data-name]').length === 1")
    page.fill("#teach-name", "referral")
    for label in ("referable", "not referable", "ungradable"):
        page.focus("#teach-label")
        page.keyboard.type(label)
        page.keyboard.press("Enter")
    assert _active(page) == "teach-label"
    _announced(page, "Added the category ungradable")
    # the radios choose where examples go: arrows move the choice, and the focus with it (it was dropped)
    page.focus("#teach-categories li:nth-child(3) input[type=radio]")
    page.keyboard.press("ArrowUp")
    assert page.is_checked("#teach-categories li:nth-child(2) input[type=radio]")
    assert _focused(page, "#teach-categories li:nth-child(2) input[type=radio]"), _active(page)
    page.keyboard.press("ArrowUp")
    # upload examples from the keyboard: the button keeps the focus once the files are listed
    for i in (1, 2):
        page.focus(f"#teach-categories li:nth-child({i}) button:has-text('Upload examples')")
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")
        chooser.value.set_files([str(p) for p in real_image_paths["CFP"][:2]])
        assert _active(page).startswith("button:Upload examples"), _active(page)
    # removing an example hands the focus to the next; removing a category to the next category's choice
    page.focus("#teach-categories li:nth-child(1) .example button")
    page.keyboard.press("Enter")
    assert _active(page).startswith("button:remove "), _active(page)
    page.focus("#teach-categories li:nth-child(3) button:has-text('Remove category')")
    page.keyboard.press("Enter")
    assert page.eval_on_selector_all("#teach-categories li[data-label]", "els => els.length") == 2
    assert _focused(page, "#teach-categories li:nth-child(2) input[type=radio]"), _active(page)
    # several categories have these buttons: each says whose it is
    names = [n["name"] for n in _ax_nodes(page) if n["role"] == "button"]
    for words in ("Upload examples", "Remove category"):
        alike = [n for n in names if n.startswith(words)]
        assert len(alike) == 2 and len(set(alike)) == 2, alike

    # fit from the keyboard: the answer gets the focus (and is read), the button having nothing left to fit
    page.focus("#teach-fit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#teach-result:not([hidden])")
    wait_for(page, "document.activeElement.id === 'teach-result'", timeout_s=10)
    assert "referral is ready" in page.inner_text("#teach-result")
    # a classifier decides: the category editor is disabled, its legend says why at full contrast
    assert page.input_value("#classifier-picker") == "referral"
    assert page.is_disabled("#category-input")
    legend = [r for r in page.evaluate(CONTRAST_JS) if r["el"].endswith("span#categories-mode")]
    assert legend and legend[0]["ratio"] >= legend[0]["need"], legend
    _record("classifier_picked_legend", legend)

    # delete from the keyboard: each Delete names its classifier; the focus goes to the next one
    deletes = [n["name"] for n in _ax_nodes(page) if n["role"] == "button" and n["name"].startswith("Delete")]
    assert sorted(deletes) == ["Delete older-one", "Delete referral"], deletes
    page.focus('#classifier-list li[data-name="older-one"] button')
    page.keyboard.press("Enter")
    wait_for(page, "!document.querySelector('#classifier-list li[data-name=\"older-one\"]')")
    assert _active(page) == "button:Delete referral"
    page.keyboard.press("Enter")
    wait_for(page, "!document.querySelector('#classifier-list li[data-name]')")
    assert _active(page) == "classifiers-title"
    wait_for(page, "document.getElementById('teach-status').textContent === 'Deleted referral.'")


def test_names_roles_states_headings_and_live_regions(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    assert page.get_attribute("html", "lang") == "en"
    # the answer's live region is there before the answer arrives (a region that appears with it is not read)
    _classify_search_and_teach(page, real_image_paths["CFP"][0])
    nodes = _ax_nodes(page)

    # headings: one h1 first, then no level skipped
    levels = [int(n["props"]["level"]) for n in nodes if n["role"] == "heading"]
    assert levels[0] == 1 and levels.count(1) == 1, levels
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), levels
    # every control and image has a name; buttons and links that repeat are named apart
    unnamed = [n for n in nodes if n["role"] in INTERACTIVE_ROLES and not n["name"].strip()]
    assert not unnamed, unnamed
    for role in ("button", "link"):
        names = [n["name"] for n in nodes if n["role"] == role]
        repeated = sorted({x for x in names if names.count(x) > 1})
        assert not repeated, f"{role}s with the same name: {repeated}"
    slider = [n["name"] for n in nodes if n["role"] == "slider"]
    assert slider == ["heat map opacity"], slider
    # toggles expose their state
    checkbox = [n for n in nodes if n["role"] == "checkbox"]
    assert [n["name"] for n in checkbox] == ["Heat map"] and checkbox[0]["props"].get("checked") == "true"
    pressed = [n["props"].get("pressed") for n in nodes if n["role"] == "button" and "pressed" in n["props"]]
    assert len(pressed) >= 2 and pressed.count("true") == 1, pressed
    assert any(n["role"] == "DisclosureTriangle" and "expanded" in n["props"] for n in nodes)

    # the probabilities are text, not only bar widths: each row shows its percentage, and a row's button (where it
    # has a heat map) is named by the row's words, the percentage among them
    rows = page.eval_on_selector_all(
        "#predictions li",
        "els => els.map(li => ({pct: li.querySelector('.pct').innerText, label: li.querySelector('.name').firstChild.textContent}))",
    )
    assert rows and all(re.fullmatch(r"(<1|>99|\d{1,2})%", r["pct"]) for r in rows), rows
    buttons = _ax_names(page, "#predictions li.explained > button.explain")
    shown = page.eval_on_selector_all("#predictions li.explained .pct", "els => els.map(e => e.innerText)")
    assert buttons and all(pct in b["name"] for b, pct in zip(buttons, shown, strict=True)), (buttons, shown)
    # a row with a heat map is still one of the list's items (a button for a row made the list shorter to a screen
    # reader, and the top rows lost their place in it): its choice of map is a button inside it
    assert _ax_role(page, "#predictions li.explained") == "listitem"
    assert _ax_role(page, "#predictions li.explained button") == "button"
    # the row whose heat map is shown says so in words, and not by a background colour alone
    selected = page.inner_text("#predictions li.selected .hm")
    others = page.eval_on_selector_all("#predictions li.explained:not(.selected) .hm", "els => els.map(e => e.innerText)")
    assert selected == "heat map shown" and set(others) == {"heat map"}, (selected, others)
    assert page.eval_on_selector("#predictions li.selected", "li => getComputedStyle(li).boxShadow") != "none"

    # results and errors reach screen readers through live regions, which are in the page before their message
    # (a region that appears with its words is not reliably read); #message and #warnings are alerts, read on showing
    live = page.evaluate(
        "[...document.querySelectorAll('[aria-live], [role=status], [role=alert]')]"
        ".map(e => [e.id, e.getAttribute('role') || e.getAttribute('aria-live'), !e.closest('[hidden]')])"
    )
    assert all(shown for id_, role, shown in live if role != "alert"), live
    assert {"announce", "teach-status", "search-info", "search-note", "page-status", "service-status"} <= {
        i for i, _, _ in live
    }
    announce = page.inner_text("#announce")
    top = rows[0]["label"]
    assert page.get_attribute("#announce", "role") == "status" and announce.startswith(f"Diagnosis ready: {top} ")
    assert rows[0]["pct"] in announce
    assert page.get_attribute("#message", "role") == "alert" and page.get_attribute("#warnings-alert", "role") == "alert"
    # the warnings stay a list inside their alert (a role on the <ul> itself replaced its list role)
    assert page.get_attribute("#warnings", "role") is None
    # the shown heat map says in words where its evidence is strongest, or that it has none
    alt = page.get_attribute("#overlay", "alt")
    assert re.fullmatch(
        r"heat map for .+: (no localised evidence|evidence strongest in the "
        r"((upper|lower) (left|centre|right)|middle (left|right)|centre) of the image)", alt or ""), alt
    assert page.get_attribute("#search-info", "aria-live") == "polite" and "images" in page.inner_text("#search-info")
    # lists rebuilt on every change are not live regions (they were re-read whole, over the diagnosis)
    for list_id in ("category-list", "teach-categories"):
        assert page.get_attribute(f"#{list_id}", "aria-live") is None, list_id
    assert page.get_attribute("#page-status", "role") == "status"
    _record("live_regions", live)
    # a warning is counted in the announcement too (a photograph classified as an OCT scan)
    page.select_option("#modality", "OCT")
    page.click("#classify-again")
    wait_for(page, "!document.getElementById('warnings').hidden && !document.body.dataset.busy")
    count = page.eval_on_selector_all("#warnings li", "els => els.length")
    assert page.inner_text("#announce").endswith(f" {count} warning{'s' if count > 1 else ''}."), page.inner_text("#announce")
    assert _ax_role(page, "#warnings") == "list" and _ax_role(page, "#warnings li") == "listitem"


TARGET_JS = r"""
[...document.querySelectorAll('button, [role=button], select, input[type=range], #search-results a.open')]
  .filter((el) => el.checkVisibility({visibilityProperty: true}) && !el.closest('.sr-only'))
  .map((el) => { const r = el.getBoundingClientRect();
    return {what: (el.id ? '#' + el.id : el.tagName.toLowerCase()) + ' ' + (el.getAttribute('aria-label') || el.innerText || '').slice(0, 40),
            width: Math.round(r.width * 10) / 10, height: Math.round(r.height * 10) / 10}; })
"""


def test_buttons_offer_a_24_pixel_target(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    """Target size (WCAG 2.2, 2.5.8): every button, including the small "×" that remove a category or an example,
    is at least 24 × 24 CSS px (they were 25 × 16), with the page in every state that shows them; so is a result
    card's "open full size" link, a block of its own (it was 15 px high)."""
    page = signed_in.page
    _classify_search_and_teach(page, real_image_paths["CFP"][0])
    page.fill("#category-input", "glaucoma")
    page.press("#category-input", "Enter")
    targets = page.evaluate(TARGET_JS)
    _record("targets", targets)
    removers = [t for t in targets if t["what"].split(" ", 1)[1].startswith("remove")]
    assert len(removers) >= 2, targets  # a category chip's and a teach example's
    assert len([t for t in targets if t["what"].startswith("a open full size")]) >= 2, targets
    small = [t for t in targets if t["width"] < 24 or t["height"] < 24]
    assert not small, small


def _classify_search_and_teach(page: Any, image: Path) -> None:
    """The page with everything on it: an answer, search results, and a teach category with one example."""
    page.set_input_files("#file-input", str(image))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    _search(page, "hard exudates")
    page.fill("#teach-label", "referable")
    page.press("#teach-label", "Enter")
    page.click("#search-results .teach-add >> nth=0")


def _contrast(page: Any, state: str) -> list[dict[str, Any]]:
    rows = page.evaluate(CONTRAST_JS)
    assert rows, state
    return rows


def test_text_and_control_edges_have_enough_contrast(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    page = signed_in.page
    states: dict[str, list[dict[str, Any]]] = {}
    page.evaluate("document.getElementById('settings').open = true")
    states["initial, settings open"] = _contrast(page, "initial")
    edges = page.evaluate(BOUNDARY_JS)
    page.evaluate("document.getElementById('settings').open = false")

    _classify_search_and_teach(page, real_image_paths["CFP"][0])
    states["after a classification and a search"] = _contrast(page, "classified")

    page.fill("#teach-label", "referable")
    page.press("#teach-label", "Enter")  # "There is a category referable already." in the error colour
    wait_for(page, "document.getElementById('teach-status').dataset.kind === 'error'")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file-input", str(notes))
    page.wait_for_selector("#message:not([hidden])")
    page.route("**/readyz", lambda route: route.abort())
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    wait_for(page, "document.getElementById('service-status').textContent === 'Service not reachable'")
    states["errors: refused file, teach error, service down"] = _contrast(page, "errors")
    page.unroute("**/readyz")

    report = {
        state: {"checked": len(rows), "worst": rows[:3], "failing": [r for r in rows if r["ratio"] < r["need"]]}
        for state, rows in states.items()
    }
    report["control edges (1.4.11)"] = {"worst": edges[:3], "failing": [e for e in edges if e["ratio"] < 3]}
    _record("contrast", report)
    failing = {state: r["failing"] for state, r in report.items() if r["failing"]}
    assert not failing, json.dumps(failing, indent=1)
    errors = states["errors: refused file, teach error, service down"]
    for measured in ("message-title", "teach-status", "service-status"):  # the error texts, not skipped
        assert any(measured in r["el"] for r in errors), measured


def test_the_page_reflows_at_320_and_768_css_pixels(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    page = signed_in.page
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(np.random.default_rng(0).bytes(MAX_UPLOAD_BYTES + 2**20))
    page.fill("#teach-label", "branch retinal vein occlusion with macular oedema")
    page.press("#teach-label", "Enter")
    results: dict[str, Any] = {}
    for width in (320, 768):
        page.set_viewport_size({"width": width, "height": 700})
        page.evaluate("document.getElementById('settings').open = true")
        results[f"{width}: initial"] = page.evaluate(REFLOW_JS)
        page.evaluate("document.getElementById('settings').open = false")
        page.set_input_files("#file-input", str(real_image_paths["CFP"][0]))
        page.wait_for_selector("#predictions li")
        wait_for(page, "!document.body.dataset.busy")
        if width == 320:
            _search(page, "hard exudates")
            page.click("#search-results .teach-add >> nth=0")
        results[f"{width}: classified"] = page.evaluate(REFLOW_JS)
        # the 413's message: the limit's name and a 32-character request id, unbroken words
        page.set_input_files("#file-input", str(huge))
        wait_for(page, "!message.hidden && message.dataset.code === 'payload_too_large'")
        results[f"{width}: error"] = page.evaluate(REFLOW_JS)
        assert page.is_visible("#message-close")
    _record("reflow", results)
    bad = {k: v for k, v in results.items() if v["scrollWidth"] > v["clientWidth"] or v["clipped"]}
    assert not bad, json.dumps(bad, indent=1)


def test_reduced_motion_is_respected(signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]) -> None:
    page = signed_in.page
    busy = (
        "(() => { const p = document.getElementById('progress'); p.hidden = false; p.classList.add('busy');"
        " const cs = getComputedStyle(document.getElementById('progress-bar'));"
        " const zone = getComputedStyle(document.getElementById('drop-zone'));"
        " const out = [cs.animationName, zone.transitionDuration]; p.classList.remove('busy'); p.hidden = true;"
        " return out; })()"
    )
    page.emulate_media(reduced_motion="no-preference")
    assert page.evaluate(busy)[0] == "slide"  # the indeterminate bar slides for everyone else
    page.emulate_media(reduced_motion="reduce")
    animation, transition = page.evaluate(busy)
    assert animation == "none" and float(transition.split(",")[0].rstrip("s")) == 0, (animation, transition)
    # "Find similar images" jumps to the results instead of scrolling smoothly
    page.evaluate(
        "() => { window.__scrolls = []; const own = Element.prototype.scrollIntoView;"
        " Element.prototype.scrollIntoView = function (o) { window.__scrolls.push(o); return own.call(this, o); }; }"
    )
    page.set_input_files("#file-input", str(real_image_paths["CFP"][0]))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    page.click("#find-similar")
    wait_for(page, "window.__scrolls.length > 0")
    scrolls = page.evaluate("window.__scrolls")
    assert all(not (isinstance(s, dict) and s.get("behavior") == "smooth") for s in scrolls), scrolls


def test_a_refused_file_is_announced_tied_to_the_drop_zone_and_the_focus_stays(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    page = signed_in.page
    page.on("filechooser", lambda _: None)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.focus("#drop-zone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(notes))
    page.wait_for_selector("#message:not([hidden])")
    wait_for(page, "document.getElementById('message').dataset.code === 'unsupported_media_type'")
    # announced (role=alert), in words, and the drop zone's description while it stands; the focus stays there
    assert page.get_attribute("#message", "role") == "alert"
    title = page.inner_text("#message-title")
    assert "not supported" in title
    assert _active(page) == "drop-zone"
    zone = [n for n in _ax_nodes(page) if n["role"] == "button" and n["name"].startswith("Drop an eye image")]
    assert len(zone) == 1 and title in zone[0]["description"], zone
    # dismissed from the keyboard: the focus goes back to the drop zone, and so does its description
    page.keyboard.press("Shift+Tab")
    assert _active(page) == "message-close"
    page.keyboard.press("Enter")
    assert page.is_hidden("#message")
    assert _active(page) == "drop-zone", "the focus fell to the top of the page"
    zone = [n for n in _ax_nodes(page) if n["role"] == "button" and n["name"].startswith("Drop an eye image")]
    assert title not in zone[0]["description"]


def test_the_status_line_is_read_when_it_changes_only(signed_in: PageRecorder, service: Service) -> None:
    """The header's status is a live region checked every 15 s: the same words written again were read again."""
    page = signed_in.page
    wait_for(page, "document.getElementById('service-status').textContent.includes('keepfit-v2-small')")
    page.evaluate(
        "window.__changes = 0; new MutationObserver((m) => { window.__changes += m.length; })"
        ".observe(document.getElementById('service-status'), {childList: true, characterData: true, subtree: true})"
    )
    with page.expect_response(lambda r: r.url.endswith("/readyz")):
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # what the 15 s check does
    page.wait_for_timeout(300)
    assert page.evaluate("window.__changes") == 0
    page.route("**/readyz", lambda route: route.abort())
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    wait_for(page, "document.getElementById('service-status').textContent === 'Service not reachable'")
    assert page.evaluate("window.__changes") > 0  # a change is still announced
    page.unroute("**/readyz")


def test_signing_in_from_the_keyboard(recorder: PageRecorder, service: Service) -> None:
    """The first thing a keyboard user meets: the settings, opened for them, with the focus on the key."""
    page = recorder.page
    page.goto(f"{service.base}/")
    page.wait_for_selector("#message:not([hidden])")
    wait_for(page, "document.activeElement.id === 'api-key'")
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    wait_for(page, "document.querySelectorAll('#category-suggestions option').length > 0")
    assert page.is_hidden("#message")
    # the settings close over the field that had the focus: it goes to their summary, not to the top of the page
    assert not page.evaluate("document.getElementById('settings').open")
    assert _focused(page, "#settings summary"), _active(page)


# ------------------------------------------------------------------ names, live regions and progress (4.1.3, 2.5.3)
def test_result_cards_and_heat_map_rows_are_named_by_the_words_they_show(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    """Label in name (2.5.3): a search result card was named "find images similar to image 11 (diabetic macular
    edema)", its score and modality never read; a heat map's row "non-perfusion area: 37%, shows its heat map"
    while it shows "non-perfusion area heat map shown 37%". Speech input says what it sees: each is named by its
    shown words, in their order (a card's after "Find images similar to", for screen readers only)."""
    page = signed_in.page
    page.set_input_files("#file-input", str(real_image_paths["CFP"][0]))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    _search(page, "hard exudates")

    cards = "#search-results li > button[data-id]"
    names = _ax_names(page, cards)
    shown = page.eval_on_selector_all(cards, SHOWN_WORDS_JS)
    ids = page.eval_on_selector_all(cards, "els => els.map(e => e.dataset.id)")
    assert names and len(names) == len(shown) == len(ids)
    for card, words, id_ in zip(names, shown, ids, strict=True):
        assert card["role"] == "button" and card["name"].startswith(f"Find images similar to image {id_} "), card
        assert "score" in words and _words(words) in _words(card["name"]), (card, words)

    rows = "#predictions li.explained > button.explain"
    names = _ax_names(page, rows)
    shown = page.eval_on_selector_all(rows, SHOWN_WORDS_JS)
    assert len(names) >= 2 and len(names) == len(shown)
    for row, words in zip(names, shown, strict=True):
        assert "heat map" in words and _words(words) in _words(row["name"]), (row, words)
        assert row["props"].get("pressed") in ("true", "false"), row  # still a toggle, with its state
    assert [r["props"]["pressed"] for r in names].count("true") == 1, names
    # rows with and without a heat map alike: read by their words, no name of their own that says other words
    labelled = page.eval_on_selector_all(
        "#predictions li, #predictions button", "els => els.filter(e => e.hasAttribute('aria-label')).length"
    )
    assert labelled == 0


SEARCH_NOTE_WATCH = r"""() => { window.__note = [];
  new MutationObserver((ms) => { for (const m of ms) window.__note.push(m.attributeName); })
    .observe(document.getElementById('search-note'), {attributes: true, attributeFilter: ['hidden', 'style', 'class']}); }"""

NOTE_STATE = r"""(() => { const n = document.getElementById('search-note'); const r = n.getBoundingClientRect();
  return {text: n.textContent, display: getComputedStyle(n).display, hidden: !!n.closest('[hidden]'), height: r.height}; })()"""


def test_the_search_note_is_in_the_page_before_its_words_come(signed_in: PageRecorder) -> None:
    """The low-similarity warning's live region (role=status) was hidden, then given its words and shown in the same
    moment: a region that appears with its words is not reliably read. It stays in the accessibility tree, empty
    (and taking no room) when there is nothing to say; only its words change."""
    page = signed_in.page
    page.evaluate(SEARCH_NOTE_WATCH)
    page.fill("#search-query", "a fluorescein angiogram showing branch retinal vein occlusion")
    page.press("#search-query", "Enter")
    page.wait_for_selector("#search-results li")
    wait_for(page, "!document.body.dataset.busy")
    empty = page.evaluate(NOTE_STATE)
    assert empty["text"] == "" and not empty["hidden"] and empty["display"] != "none", empty
    assert empty["height"] == 0, empty  # empty, it draws no box (no border, padding or margin)
    [note] = _ax_names(page, "#search-note")
    assert note["role"] == "status" and not note["ignored"], note  # there to be listened to, before its words

    page.fill("#search-query", "xxxxx")  # matches nothing well
    page.press("#search-query", "Enter")
    wait_for(page, "document.getElementById('search-note').textContent !== '' && !document.body.dataset.busy")
    warned = page.evaluate(NOTE_STATE)
    assert "Nothing in the archive matches this well" in warned["text"] and warned["height"] > 0, warned
    [note] = _ax_names(page, "#search-note")
    assert note["role"] == "status" and not note["ignored"], note

    page.fill("#search-query", "a fluorescein angiogram showing branch retinal vein occlusion")
    page.press("#search-query", "Enter")
    wait_for(page, "document.getElementById('search-note').textContent === '' && !document.body.dataset.busy")
    assert page.evaluate(NOTE_STATE)["height"] == 0
    assert not _ax_names(page, "#search-note")[0]["ignored"]
    # never hidden or shown on the way: its words were all that changed
    assert page.evaluate("window.__note") == [], page.evaluate("window.__note")


def test_the_diagnosis_announcement_is_in_the_page_after_a_failed_request(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    """#announce (role=status) lived inside #result, which a failed classification hides: after "Classify again"
    succeeded, the region came back with "Diagnosis ready" already in it, and was not read."""
    page = signed_in.page
    tries: list[int] = []

    def busy_once(route: Any) -> None:
        tries.append(1)
        if len(tries) > 1:
            route.continue_()
            return
        route.fulfill(status=503, headers={"Retry-After": "2"}, content_type="application/json",
                      body=json.dumps({"error": {"code": "busy", "message": "all model workers are busy"}}))

    page.route("**/v1/classify", busy_once)
    page.set_input_files("#file-input", str(real_image_paths["CFP"][0]))
    wait_for(page, "document.getElementById('message').dataset.code === 'busy' && !document.body.dataset.busy")
    assert page.is_hidden("#result")
    # the region the retry's answer is written to: in the accessibility tree before its words change
    assert page.evaluate("!document.getElementById('announce').closest('[hidden]')")
    [region] = _ax_names(page, "#announce")
    assert region["role"] == "status" and not region["ignored"], region
    assert page.inner_text("#announce") == ""  # not "Analysing the image…" over a request that failed

    page.focus("#classify-again")
    page.keyboard.press("Enter")
    wait_for(page, "document.getElementById('announce').textContent.startsWith('Diagnosis ready: ')")
    assert page.is_visible("#result") and len(tries) == 2
    [region] = _ax_names(page, "#announce")
    assert region["role"] == "status" and not region["ignored"], region
    page.unroute("**/v1/classify")


PROGRESS_WATCH = r"""() => { window.__progress = [];
  const $ = (id) => document.getElementById(id);
  const snap = () => { const bar = $('progress');
    window.__progress.push({shown: !$('progress').hidden, role: bar.getAttribute('role'),
      labelledby: bar.getAttribute('aria-labelledby'), min: bar.getAttribute('aria-valuemin'),
      max: bar.getAttribute('aria-valuemax'), now: bar.getAttribute('aria-valuenow'), text: $('progress-text').textContent,
      busy: $('result').getAttribute('aria-busy'), announce: $('announce').textContent}); };
  new MutationObserver(snap).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true}); }"""


def test_a_diagnosis_in_progress_is_announced_once_and_its_progress_exposed(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    """While an image was sent and analysed, nothing said so: the bar and its text had no role and #result no busy
    state. "Analysing the image…" is said once as it starts (also when the image is sent twice: categories added
    before the modality was known), #result is aria-busy until the answer is in, and the bar is a progressbar named
    by its text, with its value while uploading (none while the service works) and no live region of its own."""
    page = signed_in.page
    page.fill("#category-input", "glaucoma suspect")  # under auto-detect, before any image: the image goes twice
    page.press("#category-input", "Enter")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/v1/classify") else None)
    page.evaluate(PROGRESS_WATCH)
    page.set_input_files("#file-input", str(real_image_paths["CFP"][0]))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    log = page.evaluate("window.__progress")
    assert len(sent) == 2, sent

    running = [s for s in log if s["shown"]]
    assert running, log
    for s in running:
        assert (s["role"], s["labelledby"], s["min"], s["max"]) == ("progressbar", "progress-text", "0", "100"), s
        assert s["busy"] == "true", s  # the answer's region is being replaced, from the start to the end
        if s["text"].startswith("Analysing"):
            assert s["now"] is None, s  # the service at work: no value to give
        else:
            assert s["now"] is not None and 0 <= int(s["now"]) <= 100, s
    assert any(s["now"] == "0" for s in running), running  # the upload's start
    # said once, then replaced by the answer
    texts = [s["announce"] for s in log]
    said = [t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]]
    assert said.count("Analysing the image…") == 1, said
    assert said[-1].startswith("Diagnosis ready: ") and said[-2] == "Analysing the image…", said
    assert page.get_attribute("#result", "aria-busy") is None and page.is_hidden("#progress")
    # not a live region: each percent is not read out
    live = "[aria-live], [role=status], [role=alert], [role=log]"
    assert page.evaluate(f"!document.getElementById('progress').closest('{live}')")
    assert page.evaluate(f"!document.getElementById('progress').querySelector('{live}')")
    # Chromium's tree: a progressbar named by its text
    page.evaluate("document.getElementById('progress').hidden = false")
    [bar] = _ax_names(page, "#progress")
    assert bar["role"] == "progressbar" and bar["name"] == page.inner_text("#progress-text"), bar
    page.evaluate("document.getElementById('progress').hidden = true")


def test_text_fields_have_visible_labels(signed_in: PageRecorder) -> None:
    """The search text, a category to add and the teach panel's new category were named only by an aria-label, and
    shown only by a placeholder that goes as one types (3.3.2, 2.5.3): each has a visible label that names it."""
    page = signed_in.page
    for field, words in (("search-query", "Search text"), ("category-input", "Add a category"),
                         ("teach-label", "New category")):
        label = page.locator(f"label[for={field}]")
        assert label.count() == 1, field
        assert label.inner_text().strip() == words
        box = label.bounding_box()
        assert box and box["width"] > 20 and box["height"] > 8 and not label.evaluate("e => !!e.closest('.sr-only')")
        [node] = _ax_names(page, f"#{field}")
        assert node["name"] == words, node
        assert page.get_attribute(f"#{field}", "aria-label") is None  # the label names it: no other name over it
