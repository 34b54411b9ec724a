// hyperslab serve: the browser UI. Plain JavaScript, no libraries, no build step.
// It reads this server's JSON API; of an array it reads only what is on screen: one
// 2-D frame as PNG, one row of it as JSON for the profile, and what the user downloads.
"use strict";

const MAX_SIDE = 2048; // a larger frame is previewed strided (hyperslab.serve.ui.MAX_SIDE)
const KEY = "hyperslab-key"; // sessionStorage item holding the API key of this tab
const VALUES_MAX = 1000; // arrays with at most this many values show them as text

const $ = (id) => document.getElementById(id);
const state = {
  repos: [], repo: "", base: "api/", // the repositories this key may read; the one shown
  ref: "main", snapshot: "", query: "", offset: 0, limit: 50,
  entry: null, tree: null, path: null, array: null,
  lead: [], stride: 1, frameCtrl: null, profileCtrl: null, timer: null,
};

// ------------------------------------------------------------------ requests

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const apiKey = () => sessionStorage.getItem(KEY) || "";
const refParam = () => state.snapshot || state.ref;
const encPath = (p) => p.split("/").map(encodeURIComponent).join("/");

function apiUrl(path, params) {
  const url = new URL("../" + state.base + path, location.href);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url;
}

async function api(path, params, signal, url) {
  const headers = {};
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const res = await fetch(url || apiUrl(path, params), { headers, signal });
  if (!res.ok) {
    let code = "http_" + res.status;
    let message = res.statusText || code;
    try {
      const doc = await res.json();
      code = doc.error.code;
      message = doc.error.message;
    } catch (e) {
      /* not one of the server's JSON errors */
    }
    throw new ApiError(res.status, code, message);
  }
  return res;
}

const getJson = async (path, params, signal) => (await api(path, params, signal)).json();

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function fail(err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) {
    setStatus(apiKey() ? "The API key was refused: " + err.message
      : "This server needs an API key: enter it above.", true);
  } else {
    setStatus(err && err.message ? err.message : String(err), true);
  }
}

// ------------------------------------------------------------------ DOM helpers

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "data") Object.assign(e.dataset, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const show = (id, on) => { $(id).hidden = !on; };
const text = (v) => (typeof v === "string" ? v : JSON.stringify(v));

function fillTable(table, rows) {
  table.replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", { textContent: k }),
    el("td", { textContent: text(v) }))));
}

function select(container, node) {
  for (const s of container.querySelectorAll(".selected")) s.classList.remove("selected");
  if (node) node.classList.add("selected");
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

const safeName = (s) => s.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "");
const base = (p) => p.slice(p.lastIndexOf("/") + 1);

// ------------------------------------------------------------------ repositories

async function loadRepos() {
  const res = await api("", null, null, new URL("../api/repositories", location.href));
  const doc = await res.json();
  state.repos = doc.repositories;
  const names = state.repos.map((r) => r.name);
  if (!names.includes(state.repo)) state.repo = names[0] || "";
  const current = state.repos.find((r) => r.name === state.repo);
  state.base = current ? current.api : "api/";
  $("repo").replaceChildren(...names.map((n) => el("option", { value: n, textContent: n })));
  $("repo").value = state.repo;
  show("repo-box", doc.prefixed); // a picker only when the server shares several
}

function closeEntry() {
  for (const c of [state.frameCtrl, state.profileCtrl]) if (c) c.abort();
  state.entry = null;
  state.tree = null;
  state.path = null;
  state.array = null;
  $("entry-name").textContent = "Entry";
  $("tree").replaceChildren();
  $("node-name").textContent = "Array";
  $("node-meta").replaceChildren();
  const img = $("frame");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.removeAttribute("src");
  delete img.dataset.sel; // what is on screen: nothing
  show("entry-hint", true);
  for (const id of ["entry-meta-box", "entry-download", "preview", "download", "values"]) show(id, false);
}

// ------------------------------------------------------------------ refs and entries

async function loadRefs() {
  const [b, t] = await Promise.all([getJson("branches"), getJson("tags")]);
  const names = [...Object.keys(b.branches), ...Object.keys(t.tags)];
  const groups = [];
  for (const [label, refs] of [["branches", b.branches], ["tags", t.tags]]) {
    if (Object.keys(refs).length === 0) continue;
    groups.push(el("optgroup", { label },
      ...Object.keys(refs).sort().map((n) => el("option", { value: n, textContent: n }))));
  }
  $("ref").replaceChildren(...groups);
  if (!names.includes(state.ref)) state.ref = names.includes("main") ? "main" : names[0] || "main";
  $("ref").value = state.ref;
  await loadSnapshots();
}

async function loadSnapshots() {
  const doc = await getJson("log", { ref: state.ref, limit: 50 });
  const options = doc.snapshots.map((s) => el("option", {
    value: s.id,
    textContent: [s.id.slice(0, 12), String(s.time || "").slice(0, 19), s.message || ""].join("  "),
  }));
  $("snapshot").replaceChildren(el("option", { value: "", textContent: "latest" }), ...options);
  if (!doc.snapshots.some((s) => s.id === state.snapshot)) state.snapshot = "";
  $("snapshot").value = state.snapshot;
}

async function loadEntries() {
  const q = state.query.trim();
  let rows;
  if (q) {
    const doc = await getJson("search", { q, ref: refParam(), offset: state.offset, limit: state.limit });
    rows = doc.hits.map((h) => ({ name: h.entry, catalog: h.catalog }));
    $("entries-info").textContent = `${doc.total} match${doc.total === 1 ? "" : "es"}`
      + (doc.total > rows.length ? `, ${doc.offset + 1}-${doc.offset + rows.length} shown` : "");
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + state.limit >= doc.total;
  } else {
    const doc = await getJson("entries", { ref: refParam(), offset: state.offset, limit: state.limit });
    rows = doc.entries;
    $("entries-info").textContent = doc.total === 0 ? "no entries"
      : `entries ${doc.offset + 1}-${doc.offset + rows.length} of ${doc.total}`;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + state.limit >= doc.total;
  }
  $("entries").replaceChildren(...rows.map((r) => {
    const cat = r.catalog || {};
    const sub = cat.title || cat.sample || "";
    const btn = el("button", { type: "button", data: { entry: r.name } },
      r.name, sub ? el("span", { className: "sub", textContent: text(sub) }) : null);
    btn.addEventListener("click", () => openEntry(r.name).catch(fail));
    if (r.name === state.entry) btn.classList.add("selected");
    return el("li", {}, btn);
  }));
}

// ------------------------------------------------------------------ an entry's tree

function buildTree(doc) {
  const root = { name: "", path: "", groups: new Map(), arrays: [] };
  const node = (path) => {
    let n = root;
    let at = "";
    for (const part of path ? path.split("/") : []) {
      at = at ? at + "/" + part : part;
      if (!n.groups.has(part)) n.groups.set(part, { name: part, path: at, groups: new Map(), arrays: [] });
      n = n.groups.get(part);
    }
    return n;
  };
  for (const g of Object.keys(doc.groups)) node(g);
  for (const a of Object.keys(doc.arrays)) {
    const i = a.lastIndexOf("/");
    node(i < 0 ? "" : a.slice(0, i)).arrays.push(a);
  }
  return root;
}

function renderTree(n, depth) {
  const ul = el("ul");
  const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  for (const name of [...n.groups.keys()].sort(byName)) {
    const g = n.groups.get(name);
    const summary = el("summary", { className: "group-name", textContent: g.name + "/", data: { path: g.path } });
    summary.addEventListener("click", () => selectGroup(g.path, summary));
    const det = el("details", { open: depth < 3 }, summary, renderTree(g, depth + 1));
    ul.append(el("li", {}, det));
  }
  for (const path of n.arrays.sort(byName)) {
    const a = state.tree.arrays[path];
    const btn = el("button", { type: "button", data: { path } }, base(path),
      el("span", { className: "shape", textContent: `${a.shape.length ? a.shape.join("×") : "scalar"} ${a.dtype}` }));
    btn.addEventListener("click", () => selectArray(path));
    ul.append(el("li", {}, btn));
  }
  return ul;
}

async function openEntry(name) {
  const doc = await getJson("tree/" + encPath(name), { ref: refParam() });
  state.entry = name;
  state.tree = doc;
  select($("entries"), [...$("entries").querySelectorAll("button")].find((b) => b.dataset.entry === name));
  $("entry-name").textContent = name;
  show("entry-hint", false);
  show("entry-meta-box", true);
  show("entry-download", true);
  fillTable($("entry-meta"), Object.entries(doc.catalog || {}).filter(([k]) => !k.startsWith("@")));
  const root = buildTree(doc);
  $("tree").replaceChildren(renderTree(root, 0));
  const cat = doc.catalog || {};
  const signal = cat.default && cat.signal ? cat.default + "/" + cat.signal : null;
  const frames = Object.keys(doc.arrays).filter((p) => doc.arrays[p].shape.length >= 2);
  const pick = signal && doc.arrays[signal] ? signal : frames[0];
  setStatus(`${name}: ${Object.keys(doc.arrays).length} arrays, snapshot ${doc.snapshot.slice(0, 12)}`);
  if (pick) selectArray(pick);
  else selectGroup("", null);
}

function selectGroup(path, node) {
  select($("tree"), node);
  state.path = null;
  state.array = null;
  $("node-name").textContent = (path || "(root)") + "/";
  const attrs = (state.tree.groups[path] || {}).attrs || {};
  fillTable($("node-meta"), Object.entries(attrs).map(([k, v]) => ["@" + k, v]));
  for (const id of ["preview", "download", "values"]) show(id, false);
}

// ------------------------------------------------------------------ an array

const isNumeric = (dtype) => typeof dtype === "string" && /^[<>|=]?[biuf]\d+$/.test(dtype);
const arrayUrl = () => "slice/" + encPath(state.entry) + "/" + encPath(state.path);

function selectArray(path) {
  const a = state.tree.arrays[path];
  state.path = path;
  state.array = a;
  select($("tree"), [...$("tree").querySelectorAll("button")].find((b) => b.dataset.path === path));
  $("node-name").textContent = path;
  const dims = (xs) => (xs.length ? xs.join(" × ") : "scalar");
  const rows = [["shape", dims(a.shape)], ["dtype", a.dtype], ["chunks", dims(a.chunks)],
    ["codecs", a.codecs.join(", ") || "none"]];
  if (a.dims.length) rows.push(["dims", a.dims.join(", ")]);
  for (const [k, v] of Object.entries(a.attrs)) rows.push(["@" + k, v]);
  fillTable($("node-meta"), rows);
  const size = a.shape.reduce((x, y) => x * y, 1);
  show("values", size <= VALUES_MAX);
  if (size <= VALUES_MAX) loadValues().catch(fail);
  const frame = a.shape.length >= 2 && isNumeric(a.dtype);
  show("preview", frame);
  show("download", true);
  if (frame) setupPreview(a);
  $("sel").value = frame ? [...state.lead, ":", ":"].join(",") : "";
}

async function loadValues() {
  const path = state.path;
  const doc = await getJson(arrayUrl(), { format: "json", ref: refParam() });
  if (path !== state.path) return;
  $("values-text").textContent = text(doc.data);
}

function setupPreview(a) {
  const lead = a.shape.slice(0, -2);
  const [h, w] = a.shape.slice(-2);
  state.lead = lead.map(() => 0);
  state.stride = Math.max(1, Math.ceil(Math.max(h, w) / MAX_SIDE));
  $("sliders").replaceChildren(...lead.map((n, i) => {
    const name = a.dims[i] && !a.dims[i].startsWith("phony_dim") ? a.dims[i] : `axis ${i}`;
    const out = el("output", { textContent: `0 / ${n - 1}` });
    const input = el("input", { type: "range", min: 0, max: n - 1, value: 0, step: 1, id: `slider-${i}` });
    input.addEventListener("input", () => {
      state.lead[i] = Number(input.value);
      out.textContent = `${input.value} / ${n - 1}`;
      $("sel").value = [...state.lead, ":", ":"].join(",");
      scheduleFrame();
    });
    return el("label", {}, name, input, out);
  }));
  $("row").max = h - 1;
  $("row").value = Math.floor(h / 2);
  loadFrame();
  loadProfile();
}

function scheduleFrame() {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => { loadFrame(); loadProfile(); }, 60);
}

function frameSel() {
  const s = state.stride > 1 ? "::" + state.stride : ":";
  return [...state.lead, s, s].join(",");
}

async function loadFrame() {
  if (state.frameCtrl) state.frameCtrl.abort();
  const ctrl = new AbortController();
  state.frameCtrl = ctrl;
  const params = { sel: frameSel(), format: "png", ref: refParam(), scale: $("scale").value, cmap: $("cmap").value };
  if ($("limits").value === "manual") {
    params.vmin = $("vmin").value;
    params.vmax = $("vmax").value;
  } else {
    params.pmin = $("pmin").value;
    params.pmax = $("pmax").value;
  }
  try {
    const blob = await (await api(arrayUrl(), params, ctrl.signal)).blob();
    if (ctrl !== state.frameCtrl) return;
    const img = $("frame");
    const old = img.src;
    img.onload = () => {
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      img.dataset.sel = params.sel;
      img.dataset.query = apiUrl("", params).search; // what is on screen (read by the tests)
      const [h, w] = state.array.shape.slice(-2);
      $("frame-info").textContent = `frame ${state.lead.join(",") || "(2-D array)"}: ${w} × ${h} pixels`
        + (state.stride > 1 ? `, shown every ${state.stride}th` : "")
        + ` · ${blob.size} bytes of PNG`;
      placeRowLine();
    };
    img.src = URL.createObjectURL(blob);
  } catch (e) {
    fail(e);
  }
}

// ------------------------------------------------------------------ line profile

function placeRowLine() {
  const img = $("frame");
  const h = state.array ? state.array.shape[state.array.shape.length - 2] : 1;
  const row = Number($("row").value);
  $("row-line").style.top = `${((row + 0.5) / h) * img.clientHeight}px`;
}

async function loadProfile() {
  if (state.profileCtrl) state.profileCtrl.abort();
  const ctrl = new AbortController();
  state.profileCtrl = ctrl;
  const h = state.array.shape[state.array.shape.length - 2];
  const row = Math.min(h - 1, Math.max(0, Math.floor(Number($("row").value) || 0)));
  $("row").value = row;
  placeRowLine();
  const sel = [...state.lead, row, ":"].join(",");
  try {
    const doc = await getJson(arrayUrl(), { sel, format: "json", ref: refParam() }, ctrl.signal);
    if (ctrl !== state.profileCtrl) return;
    const values = doc.data.map(Number); // "NaN", "Infinity" as JSON strings
    drawProfile(values);
    const finite = values.filter(Number.isFinite);
    const mean = finite.reduce((x, y) => x + y, 0) / (finite.length || 1);
    $("profile").dataset.sel = sel;
    $("profile-info").textContent = `row ${row}, ${values.length} values: min ${Math.min(...finite)}, `
      + `max ${Math.max(...finite)}, mean ${mean.toPrecision(5)}`;
  } catch (e) {
    fail(e);
  }
}

function drawProfile(values) {
  const canvas = $("profile");
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = canvas.height;
  const left = 56;
  const bottom = 20;
  const top = 8;
  const right = 8;
  ctx.clearRect(0, 0, W, H);
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return;
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (i) => left + (values.length > 1 ? (i / (values.length - 1)) * (W - left - right) : 0);
  const y = (v) => H - bottom - ((v - lo) / (hi - lo)) * (H - top - bottom);
  ctx.strokeStyle = "#c5cad3";
  ctx.strokeRect(left, top, W - left - right, H - top - bottom);
  ctx.fillStyle = "#5f6b7a";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(String(+hi.toPrecision(4)), 4, top + 10);
  ctx.fillText(String(+lo.toPrecision(4)), 4, H - bottom);
  ctx.fillText("0", left, H - 5);
  ctx.fillText(String(values.length - 1), W - right - 24, H - 5);
  ctx.strokeStyle = "#2456a6";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let pen = false;
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) { pen = false; return; }
    if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
    pen = true;
  });
  ctx.stroke();
}

// ------------------------------------------------------------------ downloads

const EXTENSIONS = { npy: "npy", raw: "bin", json: "json", csv: "csv", tiff: "tif", png: "png", h5: "h5" };

async function downloadSlice() {
  const fmt = $("format").value;
  const sel = $("sel").value.trim();
  setStatus(`Downloading ${state.path} [${sel || "all"}] as ${fmt} …`);
  const blob = await (await api(arrayUrl(), { sel, format: fmt, ref: refParam() })).blob();
  const name = safeName(base(state.path) + (sel ? "_" + sel : "")) + "." + EXTENSIONS[fmt];
  download(blob, name);
  setStatus(`Downloaded ${name} (${blob.size} bytes)`);
}

async function downloadEntry(fmt) {
  setStatus(`Downloading ${state.entry} as ${fmt} …`);
  const blob = await (await api("download/" + encPath(state.entry), { format: fmt, ref: refParam() })).blob();
  const name = safeName(base(state.entry)) + "." + fmt;
  download(blob, name);
  setStatus(`Downloaded ${name} (${blob.size} bytes)`);
}

// ------------------------------------------------------------------ wiring

async function reload() {
  await loadRepos();
  await loadRefs();
  await loadEntries();
  if (state.entry) await openEntry(state.entry);
}

function wire() {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key").value.trim();
    if (k) sessionStorage.setItem(KEY, k); else sessionStorage.removeItem(KEY);
    setStatus(k ? "Using the key given" : "No key: anonymous reads");
    reload().catch(fail);
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("key").value = "";
    setStatus("Key forgotten");
    reload().catch(fail);
  });
  $("repo").addEventListener("change", () => {
    state.repo = $("repo").value;
    state.base = state.repos.find((r) => r.name === state.repo).api;
    Object.assign(state, { ref: "main", snapshot: "", query: "", offset: 0 });
    $("query").value = "";
    closeEntry();
    loadRefs().then(loadEntries).then(() => setStatus(`Repository ${state.repo}`)).catch(fail);
  });
  $("ref").addEventListener("change", () => {
    state.ref = $("ref").value;
    state.snapshot = "";
    state.offset = 0;
    loadSnapshots().then(loadEntries).then(() => state.entry && openEntry(state.entry)).catch(fail);
  });
  $("snapshot").addEventListener("change", () => {
    state.snapshot = $("snapshot").value;
    loadEntries().then(() => state.entry && openEntry(state.entry)).catch(fail);
  });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.query = $("query").value;
    state.offset = 0;
    loadEntries().catch(fail);
  });
  $("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    loadEntries().catch(fail);
  });
  $("next").addEventListener("click", () => {
    state.offset += state.limit;
    loadEntries().catch(fail);
  });
  $("limits").addEventListener("change", () => {
    const manual = $("limits").value === "manual";
    show("manual-box", manual);
    show("percentile-box", !manual);
    loadFrame();
  });
  for (const id of ["pmin", "pmax", "vmin", "vmax", "scale", "cmap"]) {
    $(id).addEventListener("change", () => loadFrame());
  }
  $("row").addEventListener("change", () => loadProfile());
  $("frame").addEventListener("click", (ev) => {
    const img = $("frame");
    const h = state.array.shape[state.array.shape.length - 2];
    $("row").value = Math.min(h - 1, Math.floor((ev.offsetY / img.clientHeight) * h));
    loadProfile();
  });
  window.addEventListener("resize", placeRowLine);
  $("download-slice").addEventListener("click", () => downloadSlice().catch(fail));
  for (const b of document.querySelectorAll(".entry-dl")) {
    b.addEventListener("click", () => downloadEntry(b.dataset.format).catch(fail));
  }
}

wire();
$("key").value = apiKey();
reload().then(() => setStatus("Ready")).catch(fail);
