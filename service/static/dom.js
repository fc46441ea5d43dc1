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
   *   linkBase(url)           a link's ?api= for this tab only (never saved); false when it is no http(s) URL
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
})();
