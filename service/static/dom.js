/*
 * KeepFIT front end: the two DOM helpers app.js and classifiers.js share (loaded before both).
 *   $(id)                          document.getElementById
 *   el(tag, attrs, ...children)    a new element: attrs 'class', 'text', 'on<event>' handlers, else attributes
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
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  };
  window.KeepfitDom = Object.freeze({ $, el });
})();
