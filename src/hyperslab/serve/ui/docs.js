// hyperslab serve: the API page. Renders ../api/openapi.json (OpenAPI 3.1) with plain
// DOM calls: no libraries, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function resolve(doc, obj) {
  let o = obj;
  while (o && o.$ref) {
    o = o.$ref.slice(2).split("/").reduce((x, k) => x[k], doc);
  }
  return o;
}

function schemaText(s) {
  if (!s) return "";
  if (s.$ref) return s.$ref.split("/").pop();
  let t = Array.isArray(s.type) ? s.type.join(" | ") : s.type || "any";
  if (s.enum) t += " (" + s.enum.join(", ") + ")";
  if (s.minimum !== undefined || s.maximum !== undefined) t += ` [${s.minimum ?? ""}..${s.maximum ?? ""}]`;
  if (s.default !== undefined) t += `, default ${s.default}`;
  return t;
}

function table(head, rows) {
  return el("table", { className: "kv" },
    el("tr", {}, ...head.map((h) => el("th", { textContent: h }))),
    ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { textContent: c })))));
}

function operation(doc, path, method, op) {
  const id = "op-" + op.operationId;
  const params = (op.parameters || []).map((p) => resolve(doc, p));
  const responses = Object.entries(op.responses || {}).map(([code, r]) => {
    const res = resolve(doc, r);
    return [code, res.description || "", Object.keys(res.content || {}).join(", ")];
  });
  const open = (op.security && op.security.length === 0) ? " (no key needed)" : "";
  return el("section", { id, className: "operation" },
    el("h3", {}, el("code", { textContent: method.toUpperCase() + " " + path })),
    el("p", { textContent: (op.summary || "") + open }),
    params.length ? table(["parameter", "in", "required", "type", "description"],
      params.map((p) => [p.name, p.in, p.required ? "yes" : "", schemaText(p.schema), p.description || ""]))
      : null,
    table(["status", "meaning", "media types"], responses));
}

async function main() {
  const res = await fetch("../api/openapi.json");
  const doc = await res.json();
  $("title").textContent = `${doc.info.title} ${doc.info.version}: API (OpenAPI ${doc.openapi})`;
  $("description").textContent = doc.info.description || "";
  const ops = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) ops.push([path, method, op]);
  }
  $("toc").replaceChildren(el("ul", {}, ...ops.map(([path, method, op]) =>
    el("li", {}, el("a", { href: "#op-" + op.operationId, textContent: `${method.toUpperCase()} ${path}` })))));
  $("operations").replaceChildren(...ops.map(([p, m, op]) => operation(doc, p, m, op)));
  $("schemas").replaceChildren(...Object.entries(doc.components.schemas).map(([name, s]) =>
    el("details", { id: "schema-" + name }, el("summary", { textContent: name }),
      el("pre", { textContent: JSON.stringify(s, null, 2) }))));
  $("status").textContent = `${ops.length} operations`;
}

main().catch((e) => {
  $("status").textContent = "Could not read openapi.json: " + e;
  $("status").className = "error";
});
