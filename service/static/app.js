/*
 * KeepFIT reference front end: plain JavaScript, no dependencies, no build step.
 *
 * Talks only to the KeepFIT service (same origin by default, or the API base set under "Connection
 * settings", which needs the service's CORS to allow this page's origin).  Endpoints used:
 *   GET  readyz                       model version, index state (public; checked every 15 s)
 *   GET  v1/categories                default category set per modality
 *   POST v1/classify  (multipart)     image + modality + categories + explain=true -> predictions, heat maps,
 *                                     ranked expert descriptions
 *   POST v1/search    (JSON)          text -> images;  (multipart) image -> images
 *   GET  v1/images/{id}[?size=256]    result images (URLs come with the search hits)
 * Errors arrive as {"error": {"code", "message"}} and are shown as they are, with a plain-language title.
 * The API key (when the service has keys) is entered once and kept in sessionStorage for this tab's session, for
 * the API base it was entered for only (dom.js, KeepfitConnection).
 */
(() => {
  'use strict';

  const PREVIEW_MAX_SIDE = 1024; // the preview is downscaled in the browser; the original is what gets sent
  // larger files or images get no local preview: decoding one whole (the browser does, even to downscale it) can
  // exhaust the tab's memory. The browser's bounds, not the service's (its own limits answer 413 in its words).
  const PREVIEW_MAX_BYTES = 40 * 1048576;
  const PREVIEW_MAX_PIXELS = 64e6;
  const EXPLAIN_TOP = 3;
  const SEARCH_TOP_K = 24;

  const { $, el, keepFocus, setAvailable, available, announce } = window.KeepfitDom; // dom.js
  const Connection = window.KeepfitConnection; // dom.js: the API base and the keys entered for it
  // dom.js: requests and their errors, worded as classifiers.js words them
  const Http = window.KeepfitHttp;
  const { ApiError, parseError } = Http;
  const REQUEST_TIMEOUT_MS = Http.TIMEOUT_MS;

  const state = {
    base: '',
    key: '',
    defaults: {},          // modality -> default categories (GET v1/categories)
    custom: null,          // the edited category list, or null: use the modality's defaults
    extra: [],             // categories added under auto-detect before any image: added to its modality's defaults
                           // once the first answer says which (they become `custom` then)
    detected: null,        // the modality auto-detect gave (or would give) the last answered image
    detectedFile: null,    // that image
    file: null,            // the image being diagnosed
    preview: null,         // the promise of its preview being drawn (decoding runs while it uploads)
    fileFailed: false,     // the service refused this file: "Classify again" waits for a new one
    failedOn: null,        // what the last refused request was (categories + modality) when the file was fine
    result: null,          // last classify response
    selected: 0,           // which explanation is shown
    xhr: null,             // the classify upload in flight (aborted by a newer one)
    classifySeq: 0,        // newest classify wins, also one whose upload had finished when a newer one started
    searchSeq: 0,          // newest search wins
    ready: false,          // the last health check (readyz) succeeded
    categoriesLoaded: false,
    keyAsked: false,       // the periodic check found the service wants an API key, and said so (once)
    picked: '',            // the classifier picked when the page last looked (classifiers.js fills the picker)
    focusBeforeMessage: null, // where the keyboard was before it went to the message's Dismiss button
  };

  // ------------------------------------------------------------------------------------------ connection
  function endpoint(path) {
    // same origin: relative to the page, so a service behind a path prefix works too
    return state.base ? `${state.base}/${path}` : path;
  }

  function headers(extra = {}) {
    return state.key ? { ...extra, 'X-API-Key': state.key } : extra;
  }

  /** An http(s) URL from an answer, resolved against the service; null for any other (javascript:, data:...): a
   *  page served without this service's Content-Security-Policy would run a javascript: link when clicked. */
  function httpUrl(url) {
    try {
      const u = new URL(String(url), state.base ? `${state.base}/` : document.baseURI);
      return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch (_) {
      return null;
    }
  }

  function networkError() {
    return Http.networkError(state.base);
  }

  function timeoutError() {
    return Http.timeoutError(REQUEST_TIMEOUT_MS);
  }

  async function api(path, { method = 'GET', json, form } = {}) {
    const init = { method, headers: headers(), credentials: 'omit', referrerPolicy: 'no-referrer' };
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    } else if (form) {
      init.body = form;
    }
    return Http.fetchJson(endpoint(path), init, { timeoutMs: REQUEST_TIMEOUT_MS, base: state.base });
  }

  /** multipart POST with upload progress (fetch cannot report it); a newer call aborts an older one. */
  function upload(path, form, onProgress) {
    if (state.xhr) state.xhr.abort();
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      state.xhr = xhr;
      xhr.open('POST', endpoint(path));
      xhr.timeout = REQUEST_TIMEOUT_MS;
      for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.upload.onload = () => onProgress(1);
      xhr.onload = () => {
        if (state.xhr === xhr) state.xhr = null;
        if (xhr.status >= 200 && xhr.status < 300) {
          try { resolve(JSON.parse(xhr.responseText)); } catch (e) { reject(new ApiError(xhr.status, 'bad_response', 'the service sent an unreadable answer')); }
        } else {
          reject(parseError(xhr.status, xhr.responseText, xhr.statusText, xhr.getResponseHeader('Retry-After')));
        }
      };
      xhr.onerror = () => { if (state.xhr === xhr) state.xhr = null; reject(networkError()); };
      xhr.ontimeout = () => { if (state.xhr === xhr) state.xhr = null; reject(timeoutError()); };
      xhr.onabort = () => reject(new ApiError(0, 'aborted', 'replaced by a newer request'));
      xhr.send(form);
    });
  }

  // -------------------------------------------------------------------------------------------- messages
  const TITLES = {
    invalid_image: 'This file could not be read as an image.',
    unsupported_media_type: 'This file type is not supported (use JPEG, PNG, TIFF, BMP, WebP or DICOM).',
    payload_too_large: 'The file is too large for the service.',
    image_too_large: 'The image has too many pixels for the service.',
    image_too_small: 'The image is too small to diagnose.',
    unauthorized: 'The service needs a valid API key.',
    token_expired: 'This image link has expired: search again.',
    too_many_auth_failures: 'Too many wrong keys were sent from this address.',
    not_ready: 'The service is not ready yet.',
    no_index: 'Image search is not available.',
    index_empty: 'The image archive is empty.',
    index_mismatch: 'The image archive does not match the model.',
    invalid_request: 'The request was rejected.',
    not_found: 'Not found.',
    artifact_unavailable: 'The model is not available.',
    network: 'The service cannot be reached.',
    timeout: 'The service took too long to answer.',
    busy: 'The service is busy.',
    too_many_requests: 'The service is busy: too many requests.',
    bad_response: 'The service sent an answer this page cannot read.',
    http_502: 'The service (or a proxy in front of it) failed.',
    http_504: 'The service (or a proxy in front of it) took too long.',
  };

  function showMessage(title, text, kind = 'error') {
    const box = $('message');
    box.dataset.about = ''; // what the message is about, when it should go by itself (see checkReady)
    box.className = kind === 'info' ? 'message info' : 'message';
    $('message-title').textContent = title;
    $('message-text').textContent = text || '';
    box.dataset.code = kind;
    box.hidden = false;
  }

  function showError(err, context) {
    if (err && err.code === 'aborted') return;
    const code = (err && err.code) || 'error';
    const title = TITLES[code] || (context ? `${context} failed.` : 'Something went wrong.');
    showMessage(title, err && err.message ? err.message : String(err));
    if (code === 'network' && state.ready) recheck(); // the header says so too, not only this message
    $('message').dataset.code = code;
    $('message').dataset.status = err && err.status != null ? String(err.status) : '';
    if (code === 'unauthorized') {
      $('settings').open = true;
      $('api-key').focus();
    }
  }

  function clearMessage() {
    $('message').hidden = true;
    describeFileError(false);
  }

  /** A refused file's message describes the drop zone (where the focus is), until the message goes. */
  function describeFileError(on) {
    $('drop-zone').setAttribute('aria-describedby', on ? 'message-title message-text drop-hint' : 'drop-hint');
  }

  // ---------------------------------------------------------------------------------------- start-up
  const HEALTH_POLL_MS = 15000;

  /** GET readyz and show what it says in the header; quiet: no message box (the periodic check). */
  async function checkReady(quiet) {
    const status = $('service-status');
    try {
      let ready;
      try {
        ready = await api('readyz');
      } catch (err) {
        // 503 with the model loaded: the configured archive is missing; diagnosis still works, search does not
        if (!(err.status === 503 && err.body && err.body.artifact)) throw err;
        ready = err.body;
        if (!quiet) showMessage('The image archive is not available.', err.body.reason || '', 'info');
      }
      // artifact and the index's count may be null (or absent, from an older or a proxied service): say what there is
      const art = ready.artifact || {};
      const idx = ready.index || {};
      const model = art.name ? `Model ${art.name}${art.version ? ` (${art.version})` : ''}` : 'Service ready';
      const index = idx.loaded ? (idx.count != null ? `${idx.count} indexed images` : 'image archive loaded') : 'no image archive loaded';
      // loaded, with an error: a newer archive was refused and searches still see the previous one (it says why)
      const refused = idx.loaded && typeof idx.error === 'string' && idx.error ? ` (${idx.error})` : '';
      status.classList.remove('bad');
      // a service other than this page's own is named: the reader knows where the images go
      const where = state.base && new URL(state.base, window.location.href).origin !== window.location.origin
        ? ` · at ${state.base}` : '';
      setStatus(`${model} · ${index}${refused}${where}`);
      state.ready = true;
      // "not ready" or "not reachable" said at start-up is out of date once the service is ready
      if ($('message').dataset.about === 'readiness') clearMessage();
    } catch (err) {
      status.classList.add('bad');
      setStatus(err.code === 'network' ? 'Service not reachable' : 'Service not ready');
      state.ready = false;
      if (!quiet) {
        showError(err, 'Connecting');
        $('message').dataset.about = 'readiness';
      }
    }
    return state.ready;
  }

  function setStatus(text) {
    // a live region: re-assigning the same words makes screen readers read them again, every 15 s
    const status = $('service-status');
    if (status.textContent !== text) status.textContent = text;
  }

  /** quiet: no message box, and the focus stays where it is (the periodic check; connect() speaks up) */
  async function loadCategories(quiet = false) {
    try {
      const cats = await api('v1/categories');
      state.defaults = cats.modalities || {};
      state.categoriesLoaded = true;
      const names = new Set();
      Object.values(state.defaults).forEach((list) => list.forEach((n) => names.add(n)));
      Object.values(cats.tasks || {}).forEach((t) => t.categories.forEach((n) => names.add(n)));
      $('category-suggestions').replaceChildren(...[...names].sort().map((n) => el('option', { value: n })));
      renderCategories();
    } catch (err) {
      // the periodic load is quiet, but a key the service asks for is asked of the user, once per connection
      // (every 15 s would take the keyboard away each time)
      const askKey = err.code === 'unauthorized' && !state.keyAsked;
      if (err.code === 'unauthorized') state.keyAsked = true;
      if (!quiet || askKey) showError(err, 'Loading the categories');
    }
  }

  async function connect() {
    const status = $('service-status');
    status.classList.remove('bad');
    setStatus('Connecting to the service…');
    state.keyAsked = false;
    $('docs-link').href = endpoint('docs');
    if (await checkReady(false)) await loadCategories();
  }

  /** The periodic and after-an-answer health check: the header follows the service, down and back up. */
  async function recheck() {
    if (await checkReady(true) && !state.categoriesLoaded) await loadCategories(true);
  }

  /** A service's address as written in different ways (case, a default port, a trailing slash) made one. */
  function serviceKey(url) {
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.origin + parsed.pathname.replace(/\/+$/, '');
    } catch (err) {
      return null;
    }
  }

  /** Whether url names the service the page talks to already: the saved base, else the page's own (its folder:
   *  behind a path prefix, /keepfit/, the page's requests go to /keepfit/..., not to the host's root). */
  function sameService(url) {
    const key = serviceKey(url);
    return key !== null && key === serviceKey(Connection.base() || new URL('.', window.location.href).href);
  }

  /** The service this page talks to, as a reader names it: this page's own server, or the base's URL. */
  function serviceName(base) {
    return base ? base : 'this page\'s service';
  }

  function loadSettings() {
    const params = new URLSearchParams(window.location.search);
    const fromUrl = (params.get('api') || '').trim().replace(/\/+$/, '');
    // a link's service is this tab's only, and no key entered for another service goes to it
    if (fromUrl && !Connection.isHttp(fromUrl)) {
      showMessage('The link\'s API base was ignored: it must start with http:// or https://', fromUrl);
    } else if (fromUrl && sameService(fromUrl)) {
      Connection.linkBase(fromUrl); // the service the page talks to already: nothing changes hands
    } else if (fromUrl) {
      // another service: a link anyone can send would otherwise send a clinician's images (and DICOM headers)
      // to it without a word, so nothing goes there until the user says so
      const box = $('link-confirm');
      $('link-confirm-url').textContent = fromUrl;
      $('link-confirm-current').textContent = serviceName(Connection.base());
      box.dataset.base = fromUrl;
      box.showModal(); // the rest of the page waits; Escape is "stay"
      $('link-confirm-stay').focus();
    }
    showSettings();
  }

  function showSettings() {
    state.base = Connection.base();
    state.key = Connection.apiKey();
    $('api-base').value = state.base;
    $('api-key').value = state.key;
  }

  /** The answer to a link's other service: use it in this tab (and connect to it), or stay; the link's ?api= then
   *  leaves the address bar either way, so that a reload does not ask again. */
  function answerLink(use) {
    const box = $('link-confirm');
    if (!box.open) return;
    box.close();
    const url = new URL(window.location.href);
    url.searchParams.delete('api');
    window.history.replaceState(null, '', url.toString());
    if (use) {
      Connection.linkBase(box.dataset.base);
      showSettings();
      connect();
    }
    $('drop-zone').focus();
  }

  function saveSettings(event) {
    event.preventDefault();
    const base = $('api-base').value.trim().replace(/\/+$/, '');
    if (base && !/^https?:\/\//i.test(base)) {
      showMessage('The API base must start with http:// or https://', base);
      return;
    }
    state.base = base;
    state.key = $('api-key').value.trim();
    Connection.save(base, state.key);
    clearMessage();
    // the field (or button) that had the focus closes with the form: the focus goes to the form's summary
    const focusWasInside = $('settings').contains(document.activeElement);
    $('settings').open = false;
    if (focusWasInside) $('settings').querySelector('summary').focus();
    connect();
  }

  // -------------------------------------------------------------------------------------------- categories
  function shownModality() {
    const chosen = $('modality').value;
    return chosen !== 'auto' ? chosen : state.detected;
  }

  function currentCategories() {
    if (state.custom) return state.custom;
    const mod = shownModality();
    const defaults = (mod && state.defaults[mod]) || [];
    return [...defaults, ...state.extra.filter((c) => !sameName(defaults, c))];
  }

  function sameName(list, name) {
    return list.some((c) => c.toLowerCase() === name.toLowerCase());
  }

  /** The defaults the added categories go on are not known yet: auto-detect, and no image answered. */
  function defaultsUnknown() {
    return !state.custom && !shownModality();
  }

  function pickedClassifier() {
    const picker = $('classifier-picker'); // classifiers.js fills it
    return picker ? picker.value : '';
  }

  function tooFew() {
    // zero-shot needs two categories: an emptied (or one-item) list is not "the defaults"
    return !pickedClassifier() && !!state.custom && state.custom.length < 2;
  }

  function staleModality() {
    // under auto-detect, the modality shown is the last answered image's until this image's answer arrives
    return $('modality').value === 'auto' && !!state.file && state.detectedFile !== state.file;
  }

  function renderCategories() {
    const list = currentCategories();
    const mod = shownModality();
    const picked = pickedClassifier();
    $('categories-mode').textContent = picked
      ? `(classifier ${picked} decides the categories)`
      : state.custom
        ? state.custom.length < 2 ? '(your list: give at least two, or reset to the defaults)' : '(your list)'
        : mod ? `(defaults for ${mod}${staleModality() ? ', as for the last image until this one is analysed' : ''})`
          : state.extra.length ? '(the detected modality\'s defaults, and these)' : '(the detected modality\'s defaults)';
    // removing a chip by keyboard: the focus goes to the next chip's button (or the last, or the text field)
    const chips = $('category-list');
    keepFocus(chips, () => chips.replaceChildren(...list.map((name) => el('li', {},
      el('span', { text: name }),
      el('button', { type: 'button', 'aria-label': `remove ${name}`, title: 'remove', text: '×', 'data-focus': `remove:${name}`,
                     onclick: () => removeCategory(name) })))),
    (i) => {
      const buttons = chips.querySelectorAll('button');
      return buttons[Math.min(i, buttons.length - 1)] || $('category-input');
    });
  }

  function editable() {
    if (!state.custom) {
      state.custom = [...currentCategories()];
      state.extra = [];
    }
    return state.custom;
  }

  function addCategory() {
    const input = $('category-input');
    const name = input.value.replace(/\s+/g, ' ').trim();
    if (!name) return;
    // before the first answer under auto-detect, an added category goes on top of the defaults the image's
    // modality will have (a list of it alone would make the diagnosis a choice between the added ones)
    const list = defaultsUnknown() ? state.extra : editable();
    const added = !sameName(list, name);
    if (added) list.push(name);
    input.value = '';
    renderCategories();
    categoriesChanged();
    announce(added ? `Added ${name}: ${list.length} categories.` : `${name} is in the list already.`);
  }

  function removeCategory(name) {
    if (defaultsUnknown()) state.extra = state.extra.filter((c) => c !== name);
    else state.custom = editable().filter((c) => c !== name);
    renderCategories();
    categoriesChanged();
    const n = currentCategories().length;
    announce(`Removed ${name}: ${n} ${n === 1 ? 'category' : 'categories'}.`);
  }

  function resetCategories() {
    state.custom = null;
    state.extra = [];
    renderCategories();
    categoriesChanged();
  }

  function requestSignature() {
    return JSON.stringify([$('modality').value, state.custom, state.extra, pickedClassifier()]);
  }

  function canClassifyAgain() {
    // after a refused file, only a new file helps; after a refused request, only a changed request does
    if (!state.file || state.fileFailed || tooFew()) return false;
    return state.failedOn === null || state.failedOn !== requestSignature();
  }

  function categoriesChanged() {
    setAvailable($('classify-again'), canClassifyAgain());
  }

  /** Another classifier picked (or none), by the user or by classifiers.js after a fit or a delete: the image is
   * asked again under it (an answer on screen was decided by the other), or, where it cannot be, its answer goes. */
  function classifierChanged() {
    renderCategories();
    categoriesChanged();
    const picked = pickedClassifier();
    if (picked === state.picked) return; // the list reloaded with the same choice
    state.picked = picked;
    if (!state.file) return;
    if (canClassifyAgain()) {
      classify();
    } else if (state.result) {
      state.result = null;
      $('result').hidden = true;
      $('announce').textContent = ''; // its "Diagnosis ready" went with the answer (emptied: nothing is read)
    }
  }

  // ------------------------------------------------------------------------------------------- diagnosis
  /** The progress bar, shown and read as one (role=progressbar, named by its text): its value while the file
   * uploads, none while the service works (busy: an indeterminate bar). Not a live region: the start of a diagnosis
   * is said once, in #announce, not every percent. */
  function setProgress(fraction, text, busy = false) {
    const box = $('progress');
    box.hidden = fraction === null;
    box.classList.toggle('busy', busy);
    if (fraction !== null) $('progress-bar').style.width = `${Math.round(fraction * 100)}%`;
    if (fraction === null || busy) box.removeAttribute('aria-valuenow');
    else box.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
    if (text) $('progress-text').textContent = text;
  }

  // Canvas transforms that draw an image stored under EXIF orientation n upright (w, h: its size as stored).
  const UPRIGHT = {
    1: () => [1, 0, 0, 1, 0, 0], 2: (w) => [-1, 0, 0, 1, w, 0], 3: (w, h) => [-1, 0, 0, -1, w, h],
    4: (w, h) => [1, 0, 0, -1, 0, h], 5: () => [0, 1, 1, 0, 0, 0], 6: (w, h) => [0, 1, -1, 0, h, 0],
    7: (w, h) => [0, -1, -1, 0, h, w], 8: (w) => [0, -1, 1, 0, 0, w],
  };
  // a 2 x 1 WebP whose EXIF says "turn 90 degrees": decoded 1 x 2 where the browser turns WebP itself
  const TURNED_WEBP = 'UklGRlAAAABXRUJQVlA4WAoAAAAIAAAAAQAAAAAAVlA4TA8AAAAvAQAAAAcQ/Y/+ByKi/wEARVhJRhoAAABNTQAqAAAACAABARIAAwAAAAEABgAAAAAAAA==';
  let browserTurnsWebp = null;

  /** The EXIF orientation the preview must apply itself: the service turns every image upright (its heat maps
   * are of the upright image); browsers turn a JPEG and a PNG, but some (Chromium) draw a WebP as stored. */
  async function orientationToApply(file) {
    const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
    if (ascii(head, 0, 4) !== 'RIFF' || ascii(head, 8, 4) !== 'WEBP') return 1;
    const turn = webpOrientation(new Uint8Array(await file.arrayBuffer()));
    if (turn === 1) return 1;
    if (!browserTurnsWebp) {
      // decoded as the upload is (a Blob, not a fetch of a data: URL, which the page's CSP refuses)
      const blob = new Blob([Uint8Array.from(atob(TURNED_WEBP), (c) => c.charCodeAt(0))], { type: 'image/webp' });
      browserTurnsWebp = createImageBitmap(blob)
        .then((bitmap) => { const turns = bitmap.width === 1; bitmap.close(); return turns; }, () => true);
    }
    return (await browserTurnsWebp) ? 1 : turn;
  }

  function ascii(bytes, at, n) {
    return String.fromCharCode(...bytes.subarray(at, at + n));
  }

  /** A WebP's EXIF orientation (1-8; 1 without one): its EXIF chunk's first directory, tag 0x0112. */
  function webpOrientation(bytes) {
    const riff = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let at = 12; at + 8 <= bytes.length;) {
      const size = riff.getUint32(at + 4, true);
      if (ascii(bytes, at, 4) === 'EXIF') {
        let tiff = bytes.subarray(at + 8, Math.min(bytes.length, at + 8 + size));
        if (ascii(tiff, 0, 6) === 'Exif\0\0') tiff = tiff.subarray(6);
        if (tiff.length < 8) return 1;
        const view = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
        const little = ascii(tiff, 0, 2) === 'II';
        const ifd = view.getUint32(4, little);
        if (ifd + 2 > tiff.length) return 1;
        for (let i = 0, n = view.getUint16(ifd, little); i < n && ifd + 14 + 12 * i <= tiff.length; i += 1) {
          const entry = ifd + 2 + 12 * i;
          if (view.getUint16(entry, little) === 0x0112) {
            const value = view.getUint16(entry + 8, little);
            return value >= 1 && value <= 8 ? value : 1;
          }
        }
        return 1;
      }
      at += 8 + size + (size & 1);
    }
    return 1;
  }

  async function drawPreview(file) {
    // createImageBitmap decodes off the main thread; the page stays responsive for large photographs.
    const canvas = $('preview');
    const ctx = canvas.getContext('2d');
    // a slow decode (a camera-size photograph) that ends after another image was chosen draws nothing: the
    // canvas is that image's now, under that image's predictions and heat map
    const stale = () => state.file !== file;
    const tooLarge = (what) => {
      paintPlaceholder(canvas, 512, 512, [`No preview for ${what}`, NO_PREVIEW[1]]);
      return false;
    };
    if (file.size > PREVIEW_MAX_BYTES) return tooLarge(`a file this large (${(file.size / 1048576).toFixed(0)} MB)`);
    let bitmap = null;
    try {
      // the size from the header only (an <img> decodes its pixels when drawn, not when loaded)
      const [width, height] = await imageSize(file);
      if (stale()) return false;
      if (width * height > PREVIEW_MAX_PIXELS) return tooLarge(`an image this large (${width} × ${height} pixels)`);
      const scale = Math.min(1, PREVIEW_MAX_SIDE / Math.max(width, height));
      const w = Math.max(1, Math.round(width * scale));
      const h = Math.max(1, Math.round(height * scale));
      // decoded at the preview's size in one step: no full-size bitmap is kept beside the downscaled one
      bitmap = scale < 1
        ? await createImageBitmap(file, { resizeWidth: w, resizeHeight: h, resizeQuality: 'high' })
        : await createImageBitmap(file);
      const turn = await orientationToApply(file);
      if (stale()) return false;
      canvas.width = turn >= 5 ? bitmap.height : bitmap.width;
      canvas.height = turn >= 5 ? bitmap.width : bitmap.height;
      ctx.setTransform(...UPRIGHT[turn](bitmap.width, bitmap.height));
      ctx.drawImage(bitmap, 0, 0);
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      canvas.dataset.preview = 'image';
      canvas.setAttribute('aria-label', 'the uploaded image');
      return true;
    } catch (_) {
      if (stale()) return false;
      // TIFF or DICOM: browsers cannot show them; the heat map is still drawn over a placeholder
      paintPlaceholder(canvas, 512, 512);
      return false;
    } finally {
      if (bitmap) bitmap.close();
    }
  }

  /** [width, height] as displayed (EXIF orientation applied), read by an <img> that is never drawn. */
  function imageSize(file) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(file);
      const img = new Image();
      img.onload = () => { URL.revokeObjectURL(url); resolve([img.naturalWidth, img.naturalHeight]); };
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error('not an image the browser can show')); };
      img.src = url;
    });
  }

  const NO_PREVIEW = ['No preview for this file format', '(the heat map is drawn over its outline)'];

  function paintPlaceholder(canvas, width, height, lines = NO_PREVIEW) {
    // a dark frame of the image's shape that says why the picture is missing (the heat map goes over it)
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#222';
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = '#bbb';
    ctx.font = `${Math.max(11, Math.min(20, Math.round(width / 26)))}px system-ui, sans-serif`;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(lines[0], width / 2, height / 2 - 12, width - 16);
    ctx.fillText(lines[1], width / 2, height / 2 + 12, width - 16);
    canvas.dataset.preview = 'placeholder';
    canvas.dataset.note = JSON.stringify(lines);
    canvas.setAttribute('aria-label', `${lines[0]} ${lines[1]}`);
  }

  function fitPlaceholder(width, height) {
    // once the service reports the image's size, give the placeholder the right shape
    const canvas = $('preview');
    if (canvas.dataset.preview !== 'placeholder' || !width || !height) return;
    const scale = 512 / Math.max(width, height);
    paintPlaceholder(canvas, Math.round(width * scale), Math.round(height * scale), JSON.parse(canvas.dataset.note || 'null') || NO_PREVIEW);
  }

  /** A preview whose shape is not the upright image's (a browser that turned it otherwise than the service did):
   * the heat map would mark another place on it, so it is drawn over the image's outline instead. */
  function checkPreviewShape(width, height) {
    const canvas = $('preview');
    if (canvas.dataset.preview !== 'image' || !width || !height) return;
    if (Math.abs(canvas.width * height / width - canvas.height) <= 1.5) return;
    paintPlaceholder(canvas, 512, 512, ['This browser shows the image turned otherwise than the service reads it',
      '(the heat map is drawn over its outline)']);
  }

  function chooseFile(file) {
    if (!file) return;
    clearMessage();
    if (file.size === 0) {
      showMessage(TITLES.invalid_image, `${file.name} is empty (0 bytes).`);
      describeFileError(true);
      return;
    }
    state.file = file;
    state.fileFailed = false;
    state.failedOn = null;
    state.result = null;
    renderCategories(); // the last image's defaults, marked as such until this image's answer comes
    $('result').hidden = false;
    $('overlay').hidden = true;
    $('peak').hidden = true;
    $('predictions').replaceChildren();
    $('descriptions').replaceChildren();
    $('modality-result').textContent = '';
    $('warnings').replaceChildren();
    $('warnings').hidden = true;
    $('decision').textContent = '';
    $('timings').textContent = '';
    $('find-similar').disabled = false;
    state.preview = drawPreview(file);
    classify();
  }

  async function classify() {
    if (!state.file) return;
    const file = state.file;
    clearMessage();
    if (tooFew()) {
      showMessage('Give at least two categories.', 'Zero-shot diagnosis compares the image with two or more ' +
        'categories: add another, or press "Reset to defaults".', 'info');
      $('category-input').focus();
      categoriesChanged();
      return;
    }
    // categories added before the modality was known, now that one is chosen: they join its defaults
    if (!state.custom && state.extra.length && !defaultsUnknown() && !pickedClassifier()) {
      editable();
      renderCategories();
    }
    const form = new FormData();
    form.append('image', state.file, state.file.name || 'image');
    form.append('modality', $('modality').value);
    if (state.custom) state.custom.forEach((c) => form.append('categories', c));
    form.append('explain', 'true');
    form.append('explain_top', String(EXPLAIN_TOP));
    const classifier = pickedClassifier();
    if (classifier) {
      ['modality', 'categories', 'explain', 'explain_top'].forEach((k) => form.delete(k));
      form.append('classifier', classifier);
    }
    const run = ++state.classifySeq;
    document.body.dataset.busy = 'classify';
    // said once as it starts (not again for a request sent again at once: categories added before the modality
    // was known); the answer's "Diagnosis ready" replaces it in the same region
    if ($('announce').textContent !== ANALYSING) $('announce').textContent = ANALYSING;
    $('result').setAttribute('aria-busy', 'true'); // its content is being replaced: not read half-done
    setAvailable($('classify-again'), false);
    setProgress(0, `Uploading ${(state.file.size / 1048576).toFixed(1)} MB…`);
    try {
      const result = await upload('v1/classify', form, (f) => {
        if (f < 1) setProgress(f, `Uploading… ${Math.round(f * 100)}%`);
        else setProgress(1, 'Analysing…', true);
      });
      // a camera-size photograph can take longer to decode in the browser than the service takes to answer:
      // the heat map and the placeholder's shape go on this image's preview, not on the previous one
      await state.preview;
      // another image was chosen, or another request sent for this one, meanwhile: that request answers
      if (state.file !== file || run !== state.classifySeq) return;
      state.result = result;
      // the modality auto would use for this image: a hand-picked modality or a classifier's is not it
      const m = result.modality;
      state.detected = !result.classifier && m.requested === 'auto' ? m.used : (m.detected || null);
      state.detectedFile = file;
      state.selected = 0;
      state.failedOn = null;
      if (!state.ready) recheck(); // it answered: the header's "not reachable" is out of date
      // categories added before the modality was known: now it is, they join its defaults, and the image is
      // asked again with them (this answer, of the defaults alone, is not shown)
      if (!classifier && state.extra.length && !state.custom && state.detected && state.defaults[state.detected]) {
        editable();
        renderCategories();
        classify();
        return;
      }
      $('result').hidden = false; // hidden by a refused first try of this image (busy, say) that was sent again
      renderResult();
      renderCategories();
    } catch (err) {
      if (err.code !== 'aborted' && state.file === file && run === state.classifySeq) {
        showError(err, 'Diagnosis');
        $('announce').textContent = ''; // no longer "Analysing": the message (an alert) says what happened
        // an earlier answer on screen is not the answer to this request (another classifier, other categories,
        // another modality): it goes, rather than be read as this one's under the new settings
        state.result = null;
        $('result').hidden = true;
        // the file itself was refused (not an image, too large, wrong type): sending it again cannot help, nor
        // searching with it
        if (isFileError(err)) {
          state.fileFailed = true;
          $('find-similar').disabled = true;
          describeFileError(true);
        } else if (err.status === 422) state.failedOn = requestSignature();
      }
    } finally {
      if (!state.xhr) {
        setProgress(null);
        delete document.body.dataset.busy;
        $('result').removeAttribute('aria-busy');
      }
      setAvailable($('classify-again'), canClassifyAgain());
    }
  }

  const ANALYSING = 'Analysing the image…';

  const FILE_ERRORS = new Set([
    'invalid_image', 'unsupported_media_type', 'payload_too_large', 'image_too_large', 'image_too_small',
  ]);

  /** The file itself was refused (also a proxy's 413 or 415 without the service's JSON). */
  function isFileError(err) {
    return !!err && (FILE_ERRORS.has(err.code) || err.status === 413 || err.status === 415);
  }

  function pct(p) {
    return p >= 0.995 ? '>99%' : p < 0.005 ? '<1%' : `${Math.round(p * 100)}%`;
  }

  /** What a prediction with `known: false` is, in a few words: `similar_known` are suggestions, never used for it. */
  function unknownNote(p) {
    const similar = Array.isArray(p.similar_known) ? p.similar_known.filter((n) => typeof n === 'string' && n) : [];
    return `not in the knowledge base, scored by its name only${similar.length ? `; closest known: ${similar.join(', ')}` : ''}`;
  }

  /** A known name that is an alias ("healthy", "DME"): the category it was read as, in a few words; '' where the
   * name is the category itself (case and spacing aside). */
  function aliasNote(p) {
    // spelt apart only by case, spaces, hyphens or punctuation: the same name (oedema / edema is worth saying)
    const loose = (s) => String(s).toLowerCase().replace(/[\s\p{P}]+/gu, ' ').trim();
    const canonical = typeof p.canonical === 'string' ? p.canonical.trim() : '';
    return p.known !== false && canonical && loose(canonical) !== loose(p.label) ? `read as: ${canonical}` : '';
  }

  function renderResult() {
    const r = state.result;
    const m = r.modality;
    const probs = m.probabilities || {};
    // a classifier's `detected` is what a DICOM header states when it states one, which the check may not find
    const found = Object.keys(probs).reduce((a, b) => (a === null || probs[b] > probs[a] ? b : a), null);
    const stated = !!r.classifier && found !== null && found !== m.detected;
    const looks = !(m.detected && m.detected !== m.used) ? ''
      : stated ? `; its DICOM header says ${m.detected}, the modality check finds ${found}, ${pct(probs[found])}`
        : `; the image looks like ${m.detected}, ${pct(probs[m.detected] || 0)}`;
    let source;
    if (r.classifier) source = `the classifier's${looks}`; // a classifier takes the modality it was fitted on
    else if (m.requested !== 'auto') source = `as selected${looks}`;
    else if (looks) source = `from the DICOM header${looks}`; // under auto only a header overrides the check
    else source = `detected, ${pct(m.confidence || 0)} sure`;
    $('modality-result').textContent = `Modality: ${m.used} (${source})`;
    const warnings = r.warnings || [];
    $('warnings').replaceChildren(...warnings.map((w) => el('li', { 'data-code': w.code }, el('strong', { text: 'Warning: ' }), w.message)));
    $('warnings').hidden = warnings.length === 0;
    // the service screened this set (any set with normal and two others): say so beside the list
    $('decision').textContent = r.decision === 'screening' ? '(normal weighed against the other categories first)' : '';
    const explained = new Map((r.explanations || []).map((e, i) => [e.label, i]));
    $('predictions').replaceChildren(...r.predictions.map((p) => {
      const idx = explained.get(p.label);
      // a name the knowledge base does not know is scored by its name alone: said in words on its row (not in a
      // tooltip, which keyboard and touch never show), with the known categories it resembles; a known one says
      // nothing, nor does a classifier's category (its examples score it, not its name). An alias says, the same
      // way, which known category it was read as ("healthy": read as normal); the name itself says nothing more
      const unknown = p.known === false && !r.classifier ? unknownNote(p) : '';
      const alias = r.classifier ? '' : aliasNote(p);
      // no aria-label: a row is read as it reads (its name, "heat map" or "heat map shown", its percentage, its
      // note), and a heat map's button is named by those words in that order, which speech input can say (2.5.3)
      const row = [
        el('span', { class: 'name' }, p.label, ...(idx !== undefined ? [' ', el('span', { class: 'hm', text: 'heat map' })] : [])),
        el('span', { class: 'pct', text: pct(p.probability) }),
        unknown ? el('span', { class: 'unknown', text: unknown }) : null,
        alias ? el('span', { class: 'alias', text: alias }) : null,
        el('span', { class: 'track' }, el('span', { class: 'fill', style: { width: `${(p.probability * 100).toFixed(1)}%` } }))];
      if (idx === undefined) return el('li', {}, ...row);
      // a row with a heat map stays a list item (the list's count and each row's place are read out): the
      // choice of map is a button inside it
      return el('li', { class: 'explained', 'data-explanation': String(idx) },
        el('button', { type: 'button', class: 'explain', 'aria-pressed': 'false', onclick: () => selectExplanation(idx) }, ...row));
    }));
    // the heat maps' image_size is the image as displayed (image.width/height are as stored, before EXIF rotation)
    const shown = r.explanations && r.explanations.length ? r.explanations[0].heatmap.image_size : null;
    if (shown) checkPreviewShape(shown[0], shown[1]);
    fitPlaceholder(shown ? shown[0] : r.image && r.image.width, shown ? shown[1] : r.image && r.image.height);
    const t = r.timings_ms || {};
    const parts = [`model ${r.model_version}`, `${Math.round(t.total || 0)} ms`];
    if (t.explain != null) parts.push(`heat maps ${Math.round(t.explain)} ms`);
    if (r.classifier) parts.push(`classifier ${r.classifier.name} (version ${r.classifier.version})`);
    if (r.cached) parts.push('from cache');
    $('timings').textContent = parts.join(' · ');
    // the artifact's own statement of intended use, with every answer (the header's note is the page's)
    $('intended-use').textContent = typeof r.intended_use === 'string' ? r.intended_use : '';
    $('intended-use').hidden = !$('intended-use').textContent;
    // screen readers hear the new answer and how many warnings it has (their words are read too: role=alert)
    const top = r.predictions[0];
    const warned = warnings.length ? ` ${warnings.length} ${warnings.length === 1 ? 'warning' : 'warnings'}.` : '';
    $('announce').textContent = (top
      ? `Diagnosis ready: ${top.label} ${pct(top.probability)}, ${r.predictions.length} categories, ${m.used}.`
      : 'Diagnosis ready.') + warned;
    selectExplanation(0);
  }

  function selectExplanation(i) {
    const r = state.result;
    const list = (r && r.explanations) || [];
    const e = list[i];
    state.selected = i;
    document.querySelectorAll('#predictions li').forEach((li) => {
      const on = li.dataset.explanation === String(i);
      li.classList.toggle('selected', on);
      const button = li.querySelector('button.explain');
      if (button) button.setAttribute('aria-pressed', String(on));
      // which map is shown, in words (not by the row's background colour alone)
      const tag = li.querySelector('.hm');
      if (tag) tag.textContent = on ? 'heat map shown' : 'heat map';
    });
    const overlay = $('overlay');
    const peakMark = $('peak');
    if (!e) {
      overlay.hidden = true;
      peakMark.hidden = true;
      $('overlay-label').textContent = 'no heat map in this answer';
      $('descriptions-for').textContent = '';
      $('descriptions').replaceChildren();
      return;
    }
    const hm = e.heatmap;
    overlay.src = /^data:image\/png[;,]/i.test(hm.png) ? hm.png : ''; // an image, never a link elsewhere
    overlay.alt = heatmapAlt(e.label, hm);
    const [w, h] = hm.image_size;
    peakMark.style.setProperty('--x', `${(100 * (hm.peak.x + 0.5)) / w}%`);
    peakMark.style.setProperty('--y', `${(100 * (hm.peak.y + 0.5)) / h}%`);
    applyOverlay();
    // a class with no positive evidence anywhere has a blank map and a meaningless peak: say so instead
    $('overlay-label').textContent = hm.localised === false
      ? `no localised evidence for “${e.label}”`
      : `evidence for “${e.label}”`;
    $('overlay-label').dataset.localised = String(hm.localised !== false);
    // an unknown category has no expert descriptions: its "descriptions" are the prompts built around its name
    const known = (r.predictions.find((p) => p.label === e.label) || {}).known !== false;
    $('descriptions-for').textContent = known
      ? `for ${e.label}`
      : `for ${e.label}: not a category the knowledge base knows, so these are only the prompts built from its name`;
    $('descriptions').replaceChildren(...e.descriptions.map((d) => el('li', {},
      el('span', { text: d.text }), el('span', { class: 'sim', text: `similarity ${d.similarity.toFixed(3)}` }))));
  }

  // the heat map in words, for those who cannot see it: where its evidence is strongest, in the image's own
  // orientation (which side is nasal depends on the eye, which the service is not told)
  function heatmapAlt(label, hm) {
    if (hm.localised === false) return `heat map for ${label}: no localised evidence`;
    const [w, h] = hm.image_size;
    const third = (v, n) => Math.min(2, Math.floor((3 * (v + 0.5)) / n));
    const row = ['upper', 'middle', 'lower'][third(hm.peak.y, h)];
    const col = ['left', 'centre', 'right'][third(hm.peak.x, w)];
    const where = row === 'middle' ? (col === 'centre' ? 'centre' : `middle ${col}`) : `${row} ${col}`;
    return `heat map for ${label}: evidence strongest in the ${where} of the image`;
  }

  function applyOverlay() {
    const on = $('overlay-toggle').checked;
    const list = (state.result && state.result.explanations) || [];
    const shown = list[state.selected];
    const hasMap = !!(shown && shown.heatmap.localised !== false);
    $('overlay').hidden = !on || !hasMap;
    $('peak').hidden = !on || !hasMap;
    $('overlay').style.opacity = String(Number($('overlay-opacity').value) / 100);
  }

  // ---------------------------------------------------------------------------------------------- search
  async function runSearch(request, describe, refused = () => {}) {
    const seq = ++state.searchSeq;
    clearMessage();
    $('search-info').textContent = 'Searching…';
    $('search-suggest').replaceChildren(); // the previous query's suggestions are not this one's (a live region: emptied, never hidden)
    document.body.dataset.busy = 'search';
    try {
      const res = await request();
      if (seq !== state.searchSeq) return;
      if (!state.ready) recheck();
      renderHits(res);
      describe();
    } catch (err) {
      if (seq !== state.searchSeq) return;
      $('search-info').textContent = '';
      $('search-note').textContent = ''; // a live region: emptied (it then takes no room), never hidden
      $('search-results').replaceChildren(); // the previous answer's images are not this query's
      $('search-query-image').hidden = true;
      showError(err, 'Search');
      if (isFileError(err)) refused();
      // a result card that had the focus is gone with the results
      if (document.activeElement === document.body) $('search-query').focus();
    } finally {
      if (seq === state.searchSeq) delete document.body.dataset.busy;
    }
  }

  function searchText(event) {
    event.preventDefault();
    const query = $('search-query').value.trim();
    if (!query) return;
    const body = { query, top_k: SEARCH_TOP_K };
    const modality = $('search-modality').value;
    if (modality) body.modality = modality;
    $('search-query-image').hidden = true;
    runSearch(() => api('v1/search', { method: 'POST', json: body }), () => {});
  }

  function searchByImage(blob, name, caption, thumbSrc, refused) {
    const form = new FormData();
    form.append('image', blob, name);
    form.append('top_k', String(SEARCH_TOP_K));
    const modality = $('search-modality').value;
    if (modality) form.append('modality', modality);
    runSearch(() => api('v1/search', { method: 'POST', form }), () => {
      const box = $('search-query-image');
      // the upload's (thumbSrc null): drawn from the preview, which is another image's once another was chosen
      // while this search ran; '' (a hit without one): none, not the upload's
      const earlier = thumbSrc === null && state.file !== blob;
      const thumb = thumbSrc === null ? (earlier ? null : previewThumbnail()) : thumbSrc;
      box.replaceChildren(...[
        thumb ? el('img', { src: thumb, alt: '' }) : null,
        el('span', { text: `Images similar to ${earlier ? `your earlier image ${name}` : caption}` })].filter(Boolean));
      box.hidden = false;
      const still = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
      $('search').scrollIntoView({ behavior: still ? 'auto' : 'smooth', block: 'start' });
      // the keyboard goes where the page went: "Images similar to …", then the results (the card pressed is gone)
      box.focus({ preventScroll: true });
    }, refused);
  }

  function previewThumbnail() {
    // the uploaded image as a 128 px data URL, when the browser could draw it (not TIFF or DICOM)
    const canvas = $('preview');
    if (canvas.dataset.preview !== 'image' || !canvas.width) return null;
    const side = 128;
    const small = document.createElement('canvas');
    small.width = side;
    small.height = side;
    const scale = Math.max(side / canvas.width, side / canvas.height); // cover, as the CSS shows it
    const w = canvas.width * scale;
    const h = canvas.height * scale;
    small.getContext('2d').drawImage(canvas, (side - w) / 2, (side - h) / 2, w, h);
    return small.toDataURL('image/jpeg', 0.8);
  }

  async function similarToHit(hit) {
    // the newest search or click wins: an earlier click whose image arrives later starts no search
    const seq = ++state.searchSeq;
    clearMessage();
    $('search-info').textContent = 'Fetching the image…';
    $('search-suggest').replaceChildren();
    let blob;
    try {
      const url = httpUrl(hit.image_url);
      if (!url) throw new ApiError(0, 'bad_response', `the service sent no usable address for image ${hit.id}`);
      const res = await fetch(url, { headers: headers(), credentials: 'omit', referrerPolicy: 'no-referrer' });
      if (!res.ok) throw parseError(res.status, await res.text(), res.statusText, res.headers.get('Retry-After'));
      blob = await res.blob();
      if (seq !== state.searchSeq) return;
    } catch (err) {
      if (seq !== state.searchSeq) return;
      $('search-info').textContent = '';
      showError(err instanceof ApiError ? err : networkError(), 'Fetching the image');
      return;
    }
    searchByImage(blob, `image-${hit.id}`, `image #${hit.id}${hit.labels.length ? ` (${hit.labels.join(', ')})` : ''}`, httpUrl(hit.thumbnail_url) || '');
  }

  function renderHits(res) {
    const hits = res.hits || [];
    $('search-info').textContent = `${hits.length} of ${res.index_count} images` +
      (res.modality ? ` (${res.modality} only)` : '') + (res.cached ? ' · from cache' : '') +
      ` · ${Math.round((res.timings_ms || {}).total || 0)} ms. Click an image to find similar ones.` +
      // a known category, whatever its wording: searched for by its expert descriptions, as classify scores it
      (res.query && typeof res.query.canonical === 'string' ? ` Searched for the category “${res.query.canonical}”.` : '');
    // an unknown text: the known categories like it (a misspelling, a sentence naming one), each a search by name
    const similar = res.query && Array.isArray(res.query.similar_known)
      ? res.query.similar_known.filter((n) => typeof n === 'string') : [];
    $('search-suggest').replaceChildren(...(similar.length ? ['Known categories like it: ', ...similar.flatMap((name, i) => [
      i ? ', ' : '',
      el('button', { type: 'button', class: 'linkish', text: `“${name}”`, 'aria-label': `search for the category ${name}`,
                     // the button goes with this answer: the keyboard focus stays on the query being searched
                     onclick: () => { $('search-query').value = name; $('search-query').focus(); $('search-form').requestSubmit(); } })]),
      '.'] : []));
    const notes = (res.warnings || []).map((w) => w.message);
    const others = hits.filter((hit) => !hit.same_image);
    if (res.low_similarity && others.length) {
      const scale = res.score_scale || {};
      // rounded down: 0.59961 below a bar of 0.6 is "0.599", never "0.600, is below 0.6"
      const best = (Math.floor(others[0].score * 1000) / 1000).toFixed(3);
      notes.unshift(`Nothing in the archive matches this well: the best score, ${best}, is below ` +
        `${scale.low_below} (cosine similarity, from -1 to 1). These are only the least unlike images.`);
    }
    // a live region, always in the page: only its words change (one unhidden with its words is not reliably read)
    $('search-note').textContent = notes.join(' ');
    $('search-note').dataset.low = String(!!res.low_similarity);
    $('search-results').replaceChildren(...hits.map((hit) => el('li', {},
      // named by what it shows (score, modality, labels: 2.5.3), after words only a screen reader reads; the
      // thumbnail's text is its id, which tells the cards apart, and a caption is the button's description (title)
      el('button', { type: 'button', 'data-id': String(hit.id), 'data-sha256': hit.sha256 || '', title: hit.caption || '', onclick: () => similarToHit(hit) },
        el('span', { class: 'sr-only', text: 'Find images similar to ' }),
        el('img', { src: httpUrl(hit.thumbnail_url) || '', alt: `image ${hit.id}`, loading: 'lazy', referrerpolicy: 'no-referrer' }),
        el('span', { class: 'meta' },
          el('span', { class: 'score', text: hit.same_image ? 'this image' : `score ${hit.score.toFixed(3)}` }),
          el('span', { text: hit.modality || '' }),
          el('span', { class: 'labels', text: hit.labels.join(', ') || 'no labels' }))),
      httpUrl(hit.image_url) && el('a', { class: 'open', href: httpUrl(hit.image_url), target: '_blank', rel: 'noopener noreferrer', text: 'open full size',
                'aria-label': `open full size: image ${hit.id} (new tab)` }))));
  }

  // ------------------------------------------------------------------------------------------------ wiring
  function wire() {
    const zone = $('drop-zone');
    const input = $('file-input');
    zone.addEventListener('click', () => input.click());
    zone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); } });
    input.addEventListener('change', () => { chooseFile(input.files[0]); input.value = ''; });
    ['dragenter', 'dragover'].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add('over'); }));
    ['dragleave', 'drop'].forEach((t) => zone.addEventListener(t, () => zone.classList.remove('over')));
    zone.addEventListener('drop', (e) => {
      e.preventDefault();
      const dt = e.dataTransfer;
      const file = dt && dt.files[0];
      // a folder is listed as a file that cannot be read (its upload failed as "cannot be reached")
      const entry = dt && dt.items && dt.items[0] && dt.items[0].webkitGetAsEntry ? dt.items[0].webkitGetAsEntry() : null;
      if (file && !(entry && entry.isDirectory)) {
        chooseFile(file);
        if (dt.files.length > 1) announce(`${dt.files.length} files were dropped: ${file.name} is diagnosed, one at a time.`);
        return;
      }
      // text, a link or a folder: nothing happened, and nothing said so
      clearMessage();
      showMessage('Nothing to diagnose in what was dropped.', entry && entry.isDirectory
        ? `${file.name} is a folder: drop one image file from it.`
        : 'Drop an image file (JPEG, PNG, TIFF, BMP, WebP or DICOM), or choose one with the button.');
      describeFileError(true);
    });
    // a file dropped anywhere else must not make the browser navigate away from the page
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => e.preventDefault());

    $('modality').addEventListener('change', () => { renderCategories(); categoriesChanged(); });
    document.addEventListener('keepfit:classifier', classifierChanged); // classifiers.js
    $('category-add').addEventListener('click', addCategory);
    $('category-input').addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); addCategory(); } });
    $('category-reset').addEventListener('click', resetCategories);
    $('classify-again').addEventListener('click', () => { if (available($('classify-again'))) classify(); });
    $('find-similar').addEventListener('click', () => {
      const file = state.file;
      if (!file || $('find-similar').disabled) return;
      // the service refused this file: searching with it again cannot help either, until another is chosen
      searchByImage(file, file.name || 'image', 'your image', null, () => { if (state.file === file) $('find-similar').disabled = true; });
    });
    $('overlay-toggle').addEventListener('change', applyOverlay);
    $('overlay-opacity').addEventListener('input', applyOverlay);
    $('search-form').addEventListener('submit', searchText);
    $('settings-form').addEventListener('submit', saveSettings);
    $('forget-key').addEventListener('click', () => {
      Connection.forgetKey();
      state.key = '';
      $('api-key').value = '';
    });
    // dismissing hides the button that has the focus: the focus goes back to where it was before, not to the top
    document.addEventListener('focusin', (e) => { if (!$('message').contains(e.target)) state.focusBeforeMessage = e.target; });
    $('link-confirm-use').addEventListener('click', () => answerLink(true));
    $('link-confirm-stay').addEventListener('click', () => answerLink(false));
    $('link-confirm').addEventListener('cancel', (event) => { event.preventDefault(); answerLink(false); }); // Escape
    $('message-close').addEventListener('click', () => {
      const back = state.focusBeforeMessage;
      clearMessage();
      (back && back.isConnected && back.getClientRects().length ? back : $('drop-zone')).focus();
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    wire();
    loadSettings();
    renderCategories();
    connect();
    setInterval(recheck, HEALTH_POLL_MS);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) recheck(); }); // back to the tab
  });
})();
