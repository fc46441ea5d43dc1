/*
 * KeepFIT front end: what app.js and classifiers.js share (loaded before both).
 *   $(id)                          document.getElementById
 *   el(tag, attrs, ...children)    a new element: attrs 'class', 'text', 'on<event>' handlers, 'style' an object of
 *                                  CSS properties (set through CSSOM: the page's Content-Security-Policy refuses
 *                                  style attributes), else attributes
 *   keepFocus(container, render, fallback)
 *                                  re-render a list the keyboard may be in without dropping the focus (below)
 *   setAvailable(button, on), available(button)
 *                                  aria-disabled instead of disabled: an unavailable button keeps the focus
 *   announce(text)                 a polite status message for screen readers (#page-status)
 *   KeepfitConnection              the API base and the keys entered for it (below)
 *   KeepfitHttp                    requests to the service and its errors, worded alike on every page (below)
 */
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else if (k === 'style') Object.assign(node.style, v);
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  };

  /*
   * A re-render replaces the elements, and the one with the keyboard focus with them: the browser then puts the
   * focus back at the top of the page.  When the focus was inside `container`, it goes to the new element with the
   * same data-focus key, else (that item is gone) to the element `fallback(i, key)` returns, i being the old element's
   * position among the container's keyed elements and key its key.
   */
  const keepFocus = (container, render, fallback) => {
    const active = document.activeElement;
    const inside = active && active !== container && container.contains(active);
    const keyed = inside ? [...container.querySelectorAll('[data-focus]')] : [];
    const key = inside ? active.dataset.focus : undefined;
    render();
    if (!inside || container.contains(active)) return;
    const same = key && [...container.querySelectorAll('[data-focus]')].find((n) => n.dataset.focus === key);
    const target = same || (fallback && fallback(keyed.indexOf(active), key));
    if (target) target.focus();
  };

  // A disabled button that has the focus loses it; an aria-disabled one keeps it, and its handler checks available()
  const setAvailable = (button, on) => button.setAttribute('aria-disabled', String(!on));
  const available = (button) => button.getAttribute('aria-disabled') !== 'true';

  // Emptied first, so that the same message twice is announced twice
  const announce = (text) => {
    const box = $('page-status');
    if (!box) return;
    box.textContent = '';
    setTimeout(() => { box.textContent = text; }, 50);
  };

  window.KeepfitDom = Object.freeze({ $, el, keepFocus, setAvailable, available, announce });

  /*
   * Where the service is and the keys for it, shared by app.js and classifiers.js.
   *   base()                  the API base: this tab's (a link's ?api=) or the saved one; '' = this page's origin
   *   apiKey() / adminKey()   the keys entered for that base, '' for any other: a link that points the page at
   *                           another host never carries the keys entered for this one
   *   isHttp(url)             whether url is an http(s) URL with a host
   *   linkBase(url)           a link's ?api= for this tab only (never saved), once the user accepted another
   *                           service; false when it is no http(s) URL
   *   save(base, key)         the settings form: base saved for later tabs, key for this tab's session
   *   setAdminKey(k), forgetKey()
   */
  const BASE = 'keepfit.apiBase';
  const KEY = 'keepfit.apiKey';
  const ADMIN = 'keepfit.adminKey';
  const FOR = '.for'; // the base a key was entered for
  const tidy = (url) => (url || '').trim().replace(/\/+$/, '');
  const base = () => tidy(sessionStorage.getItem(BASE) ?? localStorage.getItem(BASE));
  const keyFor = (name) => (sessionStorage.getItem(name + FOR) === base() ? sessionStorage.getItem(name) || '' : '');
  const setKey = (name, value) => {
    if (value) {
      sessionStorage.setItem(name, value);
      sessionStorage.setItem(name + FOR, base());
    } else {
      sessionStorage.removeItem(name);
      sessionStorage.removeItem(name + FOR);
    }
  };
  window.KeepfitConnection = Object.freeze({
    base,
    apiKey: () => keyFor(KEY),
    adminKey: () => keyFor(ADMIN),
    isHttp: (url) => /^https?:\/\/[^/\s]+/i.test(tidy(url)),
    linkBase(url) {
      const value = tidy(url);
      if (!/^https?:\/\/[^/\s]+/i.test(value)) return false;
      sessionStorage.setItem(BASE, value);
      return true;
    },
    save(newBase, key) {
      sessionStorage.removeItem(BASE);
      if (newBase) localStorage.setItem(BASE, newBase); else localStorage.removeItem(BASE);
      setKey(KEY, key);
    },
    setAdminKey: (value) => setKey(ADMIN, value),
    forgetKey: () => setKey(KEY, ''),
  });
  /*
   * Requests to the service and their errors, shared by app.js and classifiers.js so that both say the same thing
   * about the same failure.  Errors arrive as {"error": {"code", "message", "details"?, "request_id"?}}.
   *   ApiError(status, code, message, body)   status 0: no HTTP answer (network, timeout, aborted)
   *   plainText(text)                 the words of a page that is no JSON (a proxy's 502 page), never its markup
   *   retryHint(retryAfter)           a Retry-After header as words ('try again in 7 s'), '' without one
   *   parseError(status, text, statusText, retryAfter)   the ApiError of a refused request
   *   networkError(base), timeoutError(ms)               no answer at all: where it was tried; or not in time
   *   fetchJson(url, init, {timeoutMs, base})            fetch with a time limit (answer and body): the parsed
   *                                                      JSON (null for an empty body), else one of the errors above
   *   TIMEOUT_MS                      the usual time limit of one request
   */
  class ApiError extends Error {
    constructor(status, code, message, body = null) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body;  // the parsed JSON answer, when there was one (readyz's 503 says why)
    }
  }

  const TIMEOUT_MS = 120000;

  function plainText(text) {
    const raw = (text || '').trim();
    if (!/^<|<\/?(html|head|body|title|h1|center|p|div)\b/i.test(raw)) return raw.replace(/\s+/g, ' ');
    // an inert document: nothing in it loads or runs
    const doc = new DOMParser().parseFromString(raw, 'text/html');
    return (doc.title || (doc.body && doc.body.textContent) || '').replace(/\s+/g, ' ').trim();
  }

  function retryHint(retryAfter) {
    const value = (retryAfter || '').trim();
    if (!value) return '';
    const seconds = /^\d+$/.test(value) ? Number(value) : Math.ceil((Date.parse(value) - Date.now()) / 1000);
    return Number.isFinite(seconds) ? `try again in ${Math.max(1, seconds)} s` : '';
  }

  function parseError(status, text, statusText, retryAfter) {
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON: a proxy's page, say */ }
    const err = body && body.error;
    const retry = retryHint(retryAfter);
    if (err && err.code) {
      let message = String(err.message || '');
      if (Array.isArray(err.details) && err.details.length) {
        // the service's message already says the first few details in the same words: only the others are added
        const more = err.details.map((d) => `${d.field}: ${d.message}`).filter((d) => !message.includes(d));
        if (more.length) message += ` (${more.join('; ')})`;
      }
      if (retry) message += ` (${retry})`; // a busy service's Retry-After
      // what the user quotes to whoever runs the service: it finds this request's lines in the log
      if (err.request_id) message += ` (request id ${err.request_id})`;
      return new ApiError(status, String(err.code), message);
    }
    const fallback = status === 503 ? 'not_ready' : status === 429 ? 'too_many_requests' : `http_${status}`;
    const said = plainText(text).slice(0, 200);
    let message = (body && typeof body.reason === 'string' && body.reason)
      || (said ? (said.includes(String(status)) ? said : `HTTP ${status}: ${said}`)
        : `HTTP ${status}${statusText ? ` ${statusText}` : ''}`);
    if (retry) message += ` (${retry})`;
    return new ApiError(status, fallback, message, body);
  }

  function networkError(base) {
    const where = base || window.location.origin;
    return new ApiError(0, 'network', `no answer from ${where} (is the service running, and does its CORS allow this page?)`);
  }

  function timeoutError(ms) {
    return new ApiError(0, 'timeout', `no answer within ${Math.round(ms / 1000)} s`);
  }

  async function fetchJson(url, init, { timeoutMs = TIMEOUT_MS, base = '' } = {}) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    let response;
    let text;
    try {
      response = await fetch(url, { ...init, signal: controller.signal });
      text = await response.text(); // a body that stops arriving is under the same limit
    } catch (_) {
      throw controller.signal.aborted ? timeoutError(timeoutMs) : networkError(base); // our timer, or no answer at all
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) throw parseError(response.status, text, response.statusText, response.headers.get('Retry-After'));
    try {
      return text ? JSON.parse(text) : null;
    } catch (_) { // a captive portal's or a proxy's page with 200
      throw new ApiError(response.status, 'bad_response', 'the service sent an unreadable answer (not JSON): is the API base right?');
    }
  }

  window.KeepfitHttp = Object.freeze({
    ApiError, plainText, retryHint, parseError, networkError, timeoutError, fetchJson, TIMEOUT_MS,
  });
})();
