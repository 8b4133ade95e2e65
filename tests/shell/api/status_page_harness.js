// Runs hactl/api/static/status.js in Node against a live API, with the smallest DOM the page
// uses, so a test can check what the page renders and what its buttons do without a browser.
//
// usage: node status_page_harness.js STATUS_JS BASE_URL TOKEN ACTION RS
// prints one JSON object: {before, after, error} (rows as arrays of cell texts).
"use strict";

const fs = require("fs");
const vm = require("vm");

const [scriptPath, base, token, action, target] = process.argv.slice(2);

class Element {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.children = [];
    this.listeners = {};
    this.dataset = {};
    this.className = "";
    this.value = "";
    this.checked = false;
    this._text = "";
  }
  get textContent() {
    return this._text + this.children.map((c) => c.textContent).join("");
  }
  set textContent(v) {
    this._text = String(v);
    this.children = [];
  }
  appendChild(child) { this.children.push(child); return child; }
  replaceChildren() { this.children = []; }
  insertRow() { return this.appendChild(new Element("tr")); }
  insertCell() { return this.appendChild(new Element("td")); }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  click() { for (const fn of this.listeners.click || []) fn(); }
  all(tag) {
    const out = [];
    for (const c of this.children) {
      if (c.tagName === tag) out.push(c);
      out.push(...c.all(tag));
    }
    return out;
  }
}

const byId = {};
for (const id of ["meta", "token", "expire", "error"]) byId[id] = new Element(id === "meta" ? "div" : "input");
const bodies = { "#vrrp tbody": new Element("tbody"), "#servers tbody": new Element("tbody") };
const storage = new Map([["hactl-token", token]]);
const realFetch = globalThis.fetch;

const context = vm.createContext({
  document: {
    getElementById: (id) => byId[id],
    querySelector: (sel) => bodies[sel],
    createElement: (tag) => new Element(tag),
  },
  sessionStorage: { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) },
  fetch: (path, opts) => realFetch(base + path, opts),
  setInterval: () => 0, // the test drives refreshes itself
  console, Promise, JSON, Date, encodeURIComponent, Error,
});

function rows() {
  return bodies["#servers tbody"].all("TR").map((tr) => tr.all("TD").map((td) => td._text.trim()));
}

async function until(predicate, what) {
  for (let i = 0; i < 250; i++) {
    if (predicate()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("timed out waiting for " + what);
}

(async () => {
  vm.runInContext(fs.readFileSync(scriptPath, "utf8"), context, { filename: "status.js" });
  await until(() => rows().length > 1, "the first render");
  const before = rows();
  const row = bodies["#servers tbody"].all("TR").find((tr) => tr.dataset.rs === target);
  const button = row.all("BUTTON").find((b) => b.dataset.op === action);
  const errorBefore = byId.error.textContent;
  button.click();
  await until(
    () => byId.error.textContent !== errorBefore ||
      JSON.stringify(rows()) !== JSON.stringify(before), "the page to change");
  await new Promise((r) => setTimeout(r, 100)); // let the refresh after the action land
  process.stdout.write(JSON.stringify({ before, after: rows(), error: byId.error.textContent }));
})().catch((e) => { process.stderr.write(String(e.stack || e)); process.exit(1); });
