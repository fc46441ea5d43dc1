/*
 * KeepFIT front end: a clinic's own categories (few-shot classifiers).  Plain JavaScript, no dependencies.
 *
 * - "Teach a category": name a classifier, give each category examples (uploaded files, or search results
 *   added with their "+ example" button), fit it (POST v1/classifiers, admin key in X-Admin-Key), and see the
 *   cross-validated estimate of how well it separates the categories, and the fit's warnings (a category whose
 *   text the text encoder cannot read, e.g. Chinese).
 * - The classifier picker next to the category editor: app.js sends `classifier=NAME` instead of the
 *   categories when one is picked (it reads #classifier-picker).
 * - The stored classifiers (GET v1/classifiers) with their estimates, each deletable.
 * Connection settings (API base, read key) are the ones app.js keeps; the admin key is kept for this tab's
 * session only, like the read key.
 */
(() => {
  'use strict';

  const { $, el, keepFocus, setAvailable, available, announce } = window.KeepfitDom; // dom.js

  // categories being taught: [{label, files: [File], ids: [{id, thumb}]}]; `active` receives search results;
  // `removed`: the position of the category just removed, for render() to put the keyboard focus beside it
  const teach = { categories: [], active: 0, busy: false, removed: null };
  const deleting = new Set(); // classifiers whose DELETE is in flight: a second press sends no second one
  let listSeq = 0;            // newest list wins: a slow earlier GET never brings back a deleted classifier
  let adminKeyBase = '';      // the API base whose admin key the field shows

  const Connection = window.KeepfitConnection; // dom.js: the API base and the keys entered for it
  const Http = window.KeepfitHttp;             // dom.js: requests and their errors

  function base() {
    return Connection.base();
  }

  function endpoint(path) {
    return base() ? `${base()}/${path}` : path;
  }

  function headers(admin) {
    const h = {};
    const key = Connection.apiKey();
    if (key) h['X-API-Key'] = key;
    const adminKey = Connection.adminKey();
    if (admin && adminKey) h['X-Admin-Key'] = adminKey;
    return h;
  }

  // a fit embeds every example before it answers: minutes for a large set, not the usual limit
  const FIT_TIMEOUT_MS = 600000;

  /** The service's JSON answer; its errors worded as app.js words them (dom.js, KeepfitHttp). */
  async function call(path, { method = 'GET', body, admin = false, timeoutMs = Http.TIMEOUT_MS } = {}) {
    return Http.fetchJson(endpoint(path), {
      method, body, headers: headers(admin), credentials: 'omit', referrerPolicy: 'no-referrer',
    }, { timeoutMs, base: base() });
  }

  function say(text, kind = 'info') {
    const box = $('teach-status');
    // never hidden: a live region that appears with its message is not reliably read
    box.textContent = text;
    box.dataset.kind = kind;
  }

  // ------------------------------------------------------------------------------------------ the picker
  async function refreshClassifiers(select) {
    const seq = ++listSeq;
    let list = [];
    try {
      list = ((await call('v1/classifiers')) || {}).classifiers || [];
      if (seq !== listSeq) return;
    } catch (err) {
      if (seq !== listSeq) return;
      $('classifier-list').replaceChildren(el('li', { class: 'hint', text: `Classifiers unavailable: ${err.message}` }));
      return;
    }
    const picker = $('classifier-picker');
    const current = select !== undefined ? select : picker.value;
    picker.replaceChildren(
      el('option', { value: '', text: 'zero-shot: the categories below' }),
      ...list.map((c) => el('option', {
        value: c.name,
        text: `${c.name} (${c.modality}, ${c.categories.length} categories${c.usable === false ? ', needs a refit' : ''})`,
      })));
    picker.value = list.some((c) => c.name === current) ? current : '';
    pickerChanged();
    // a deleted classifier's button had the focus: the next one's gets it, or the list's heading
    const stored = $('classifier-list');
    keepFocus(stored, () => stored.replaceChildren(...(list.length ? list.map(renderStored) : [
      el('li', { class: 'hint', text: 'No classifiers yet.' })])),
    (i) => {
      const buttons = stored.querySelectorAll('button');
      return buttons[Math.min(i, buttons.length - 1)] || $('classifiers-title');
    });
  }

  // ", plausibly 0.55–0.86" of a [low, high] range; '' without one (a store written before ranges)
  function plausibly(range) {
    return Array.isArray(range) && range.length === 2
      ? `, plausibly ${Number(range[0]).toFixed(2)}–${Number(range[1]).toFixed(2)}` : '';
  }

  function estimateText(c) {
    const e = c.estimate || {};
    // zero-shot on the same examples: what to compare with before using the classifier instead (absent without
    // the text prior, or in stores written before it); shown with or without an estimate
    const z = e.zero_shot;
    const zero = z && z.balanced_accuracy != null
      ? `; zero-shot on the same examples ${Number(z.balanced_accuracy).toFixed(2)}${plausibly(z.range)}` : '';
    if (e.balanced_accuracy == null) return `no estimate (too few examples to hold any out)${zero}`;
    // chance, scheme and n are optional (a store written by an older release): say what there is
    const how = [e.scheme && e.n != null ? `${e.scheme} over ${e.n} examples` : e.scheme || (e.n != null ? `over ${e.n} examples` : ''),
      e.chance != null ? `chance ${Number(e.chance).toFixed(2)}` : ''].filter(Boolean).join('; ');
    // the range: one fit's estimate is far from exact with few examples
    return `cross-validated balanced accuracy ${Number(e.balanced_accuracy).toFixed(2)}${plausibly(e.range)}${how ? ` (${how})` : ''}${zero}`;
  }

  function renderStored(c) {
    return el('li', { 'data-name': c.name },
      el('strong', { text: c.name }),
      el('span', { class: 'hint', text: ` ${c.modality} · ${c.method} · ${c.categories.map((k) => `${k.label} (${k.examples})`).join(', ')}` }),
      el('div', { class: 'hint estimate', text: estimateText(c) }),
      el('button', { type: 'button', class: 'secondary small', text: 'Delete', 'aria-label': `Delete ${c.name}`,
                     'data-focus': `delete:${c.name}`, onclick: () => removeClassifier(c.name) }));
  }

  function pickerChanged() {
    const picked = $('classifier-picker').value;
    // neither the category editor nor the modality applies while a classifier decides (it takes the modality
    // it was fitted on); app.js words the editor's heading
    $('categories').classList.toggle('overridden', !!picked);
    $('categories').disabled = !!picked; // its legend says why
    $('categories-mode').dataset.classifier = picked;
    $('modality').disabled = !!picked;
    $('modality').title = picked ? `classifier ${picked} uses the modality it was fitted on` : '';
    document.dispatchEvent(new CustomEvent('keepfit:classifier'));
  }

  async function removeClassifier(name) {
    if (deleting.has(name) || !window.confirm(`Delete the classifier ${name}?`)) return;
    deleting.add(name);
    try {
      await call(`v1/classifiers/${encodeURIComponent(name)}`, { method: 'DELETE', admin: true });
      say(`Deleted ${name}.`);
      if ($('teach-result').dataset.name === name) $('teach-result').hidden = true; // no longer "ready"
      await refreshClassifiers(); // its button stays until the list is back: pressing it again sends nothing
    } catch (err) {
      say(`Deleting ${name} failed: ${err.message}`, 'error');
    } finally {
      deleting.delete(name);
    }
  }

  // ------------------------------------------------------------------------------------ teaching panel
  function addCategory(label) {
    const name = (label || $('teach-label').value).replace(/\s+/g, ' ').trim();
    if (!name) return;
    if (teach.categories.some((c) => c.label.toLowerCase() === name.toLowerCase())) {
      say(`There is a category ${name} already.`, 'error');
      return;
    }
    teach.categories.push({ label: name, files: [], ids: [] });
    teach.active = teach.categories.length - 1;
    $('teach-label').value = '';
    render();
    announce(`Added the category ${name}; search results and uploads now go to it.`);
  }

  function render() {
    // each control keyed by its category, so that the keyboard focus survives the re-render; a removed example hands
    // it to the next (the keys are positions) or to its category's upload button, a removed category to the next
    // category's choice or to the text field
    const list = $('teach-categories');
    const removed = teach.removed;
    teach.removed = null;
    keepFocus(list, () => list.replaceChildren(...teach.categories.map((c, i) => {
      const input = el('input', { type: 'file', multiple: '', accept: 'image/*,.dcm,application/dicom', hidden: '', 'data-category': c.label });
      input.addEventListener('change', () => {
        c.files.push(...input.files);
        input.value = '';
        render();
      });
      const examples = [
        ...c.files.map((f, j) => el('li', { class: 'example', title: f.name },
          el('span', { text: f.name }),
          el('button', { type: 'button', class: 'icon', 'aria-label': `remove ${f.name}`, text: '×', 'data-focus': `${c.label}:file:${j}`,
                         onclick: () => { c.files.splice(j, 1); render(); } }))),
        ...c.ids.map((x, j) => el('li', { class: 'example', title: `indexed image ${x.id}` },
          x.thumb ? el('img', { src: x.thumb, alt: `image ${x.id}` }) : el('span', { text: `#${x.id}` }),
          el('button', { type: 'button', class: 'icon', 'aria-label': `remove image ${x.id}`, text: '×', 'data-focus': `${c.label}:id:${j}`,
                         onclick: () => { c.ids.splice(j, 1); render(); } }))),
      ];
      return el('li', { class: i === teach.active ? 'teach-category active' : 'teach-category', 'data-label': c.label },
        el('label', { class: 'toggle' },
          el('input', { type: 'radio', name: 'teach-active', 'data-focus': `${c.label}:active`, ...(i === teach.active ? { checked: '' } : {}),
                        onchange: () => { teach.active = i; render(); } }),
          el('strong', { text: c.label })),
        el('span', { class: 'hint count', text: ` ${c.files.length + c.ids.length} examples` }),
        el('ul', { class: 'examples' }, ...examples),
        el('div', { class: 'row' },
          input,
          // visible words first, then whose (several categories each have these two buttons)
          el('button', { type: 'button', class: 'secondary small', text: 'Upload examples', 'aria-label': `Upload examples of ${c.label}`,
                         'data-focus': `${c.label}:upload`, onclick: () => input.click() }),
          el('button', { type: 'button', class: 'secondary small', text: 'Remove category', 'aria-label': `Remove category ${c.label}`,
                         onclick: () => {
                           // its examples (chosen one by one) would go with it: ask first
                           const n = c.files.length + c.ids.length;
                           if (n && !window.confirm(`Remove the category ${c.label} and its ${n} ${n === 1 ? 'example' : 'examples'}?`)) return;
                           teach.categories.splice(i, 1);
                           teach.active = 0;
                           teach.removed = i;
                           render();
                           announce(`Removed the category ${c.label}.`);
                         } })));
    })), (_, key) => {
      if (removed != null) return list.querySelectorAll('input[type=radio]')[Math.min(removed, teach.categories.length - 1)] || $('teach-label');
      const label = key && key.replace(/:(file|id):\d+$/, '');
      return [...list.querySelectorAll('[data-focus]')].find((n) => n.dataset.focus === `${label}:upload`);
    });
    const total = teach.categories.reduce((n, c) => n + c.files.length + c.ids.length, 0);
    // aria-disabled: the button keeps the focus while it fits (a disabled one drops it)
    setAvailable($('teach-fit'), !teach.busy && teach.categories.length >= 2 && total > 0);
    document.querySelectorAll('#search-results .teach-add').forEach((b) => {
      const c = teach.categories[teach.active];
      b.setAttribute('aria-disabled', c ? 'false' : 'true');
      b.textContent = c ? `+ example of ${c.label}` : '+ example (teach a category first)';
      b.setAttribute('aria-label', `${b.textContent}: image ${b.dataset.teachId}`); // one in every result card
    });
  }

  async function fit() {
    if (!available($('teach-fit'))) return;
    // the key the field shows is the one sent (a change event has not always come: a key pasted, then Enter)
    Connection.setAdminKey($('admin-key').value.trim());
    const name = $('teach-name').value.trim();
    if (!name) { say('Give the classifier a name.', 'error'); return; }
    const form = new FormData();
    form.append('name', name);
    form.append('modality', $('teach-modality').value);
    form.append('spec', JSON.stringify({
      // with the SHA-256 each id was found as: an index built afresh since renumbers its images, and an id would then
      // teach the category another picture; the service refuses those (404) instead
      categories: teach.categories.map((c) => ({
        label: c.label,
        ids: c.ids.map((x) => x.id),
        ...(c.ids.length && c.ids.every((x) => x.sha256) ? { sha256: c.ids.map((x) => x.sha256) } : {}),
      })),
    }));
    // each file as `examples` with its label in a `labels` field (in order), not in an `examples.<label>` field
    // name: the browser escapes a name's quotes and line breaks (`"` -> %22), which then named another category
    teach.categories.forEach((c) => c.files.forEach((f) => {
      form.append('labels', c.label);
      form.append('examples', f, f.name);
    }));
    teach.busy = true;
    render();
    say('Fitting…');
    document.body.dataset.busy = 'teach';
    try {
      const answer = await call('v1/classifiers', { method: 'POST', body: form, admin: true, timeoutMs: FIT_TIMEOUT_MS });
      // a 2xx with an empty body (a proxy that drops it, say) is still a fit: say what is known, and reload the list
      const c = answer && typeof answer === 'object' ? answer : null;
      const fitted = (c && c.name) || name;
      const about = c ? [c.method, c.examples != null ? `${c.examples} examples` : '', c.version != null ? `version ${c.version}` : '']
        .filter(Boolean).join(', ') : '';
      $('teach-summary').replaceChildren(
        el('strong', { text: `${fitted} is ready` }),
        el('span', { text: about ? ` (${about}). ` : '. ' }),
        el('span', { class: 'estimate', text: c ? estimateText(c) : 'The service sent no details of the fit: its estimate is in the list below.' }),
        el('p', { class: 'hint', text: 'A rough guide from your own examples, not a clinical validation. It is now selected for diagnosis above.' }));
      // what the service says about the fit (a category written in a script its text encoder cannot read), shown
      // as a diagnosis's warnings are: each message as text, in the alert beside the estimate
      const warnings = c && Array.isArray(c.warnings) ? c.warnings.filter((w) => w && w.message) : [];
      $('teach-warnings').replaceChildren(...warnings.map((w) => el('li', { 'data-code': String(w.code || '') },
        el('strong', { text: 'Warning: ' }), String(w.message))));
      $('teach-warnings').hidden = warnings.length === 0;
      $('teach-result').dataset.name = fitted;
      $('teach-result').hidden = false;
      say('');
      teach.categories = [];
      await refreshClassifiers(fitted);
      // the fit button is unavailable now (no categories left): the keyboard goes to the answer, which is read out
      const focused = document.activeElement;
      if (!focused || focused === document.body || focused.id === 'teach-fit') $('teach-result').focus();
    } catch (err) {
      // the service may still finish a fit it did not answer in time: it then appears in the list
      say(`Fitting failed: ${err.message}${err.code === 'timeout' ? ' (the service may still be fitting it: reload the page in a while to see whether it is listed)' : ''}`, 'error');
      $('teach-status').dataset.code = err.code;
      if (err.code === 'admin_key_required') $('admin-key').focus();
    } finally {
      teach.busy = false;
      delete document.body.dataset.busy;
      render();
    }
  }

  // search results get a "+ example" button (the grid is rebuilt by app.js on every search)
  function decorateHits() {
    document.querySelectorAll('#search-results li').forEach((li) => {
      if (li.querySelector('.teach-add')) return;
      const hitButton = li.querySelector('button[data-id]');
      if (!hitButton) return;
      const id = Number(hitButton.dataset.id);
      const img = hitButton.querySelector('img');
      // a span with the button role, not a <button>: the card's own button stays the only one in the card
      const add = el('span', { role: 'button', tabindex: '0', class: 'teach-add', 'data-teach-id': String(id) });
      const use = () => {
        const c = teach.categories[teach.active];
        if (!c) return;
        const added = !c.ids.some((x) => x.id === id);
        if (added) c.ids.push({ id, sha256: hitButton.dataset.sha256 || null, thumb: img ? img.src : null });
        render();
        announce(added ? `Image ${id} added to ${c.label}: ${c.files.length + c.ids.length} examples.` : `Image ${id} is an example of ${c.label} already.`);
      };
      add.addEventListener('click', use);
      add.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); use(); } });
      li.append(add);
    });
    render();
  }

  function wire() {
    $('admin-key').value = Connection.adminKey();
    adminKeyBase = Connection.base();
    $('admin-key').addEventListener('change', () => Connection.setAdminKey($('admin-key').value.trim()));
    $('teach-add').addEventListener('click', () => addCategory());
    $('teach-label').addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); addCategory(); } });
    $('teach-fit').addEventListener('click', fit);
    // app.js asks the image again under the classifier picked (also when a fit or a delete here picks another)
    $('classifier-picker').addEventListener('change', pickerChanged);
    new MutationObserver(decorateHits).observe($('search-results'), { childList: true });
    render();
    refreshClassifiers();
  }

  document.addEventListener('DOMContentLoaded', wire);
  // app.js re-reads the key on "Save and reconnect" (its handler on the form has run, and saved the base, before this
  // one on the document): reload the list with it.  Where the API base changed, the admin key field shows the key
  // entered for the service now connected to (a key is only ever sent to the service it was entered for); at once,
  // so that a key typed next is never replaced, and not otherwise, so that a key typed and not yet saved stays.
  document.addEventListener('submit', (e) => {
    if (!e.target || e.target.id !== 'settings-form') return;
    if (Connection.base() !== adminKeyBase) {
      adminKeyBase = Connection.base();
      $('admin-key').value = Connection.adminKey();
    }
    setTimeout(() => refreshClassifiers(), 50);
  });
})();
