// The API reference at /docs: renders the server's own /openapi.json (nothing is fetched elsewhere).
import { h as element } from "./dom.js";

// Children may come in nested lists: the page builds sections of lists of rows.
const h = (tag, props, ...children) => element(tag, props, children.flat(Infinity));

const COMPONENT = "#/components/";
// The OpenAI-compatible API is served under three prefixes; the page shows each operation once.
const ALIASES = ["/openai/v1/", "/openai/"];
const SCHEMES = {
  bearer: "Authorization: Bearer with an API token or the master key",
  session: "the console's session cookie",
  csrf: "its CSRF token in x-csrf-token",
};

let doc;

function resolve(node) {
  while (node && node.$ref && node.$ref.startsWith(COMPONENT)) {
    node = node.$ref.slice(2).split("/").reduce((at, part) => at[part.replace(/~1/g, "/").replace(/~0/g, "~")], doc);
  }
  return node;
}

const refName = (ref) => ref.slice(ref.lastIndexOf("/") + 1);
const schemaId = (name) => `schema-${name}`;

// Descriptions are short markdown: paragraphs, `code`, **bold** and [links](…).
function markdown(text) {
  if (!text) return null;
  return h(
    "div",
    { class: "desc" },
    text.split(/\n\s*\n/).map((para) => h("p", {}, inline(para.replace(/\s*\n\s*/g, " ")))),
  );
}

function inline(text) {
  const parts = [];
  const pattern = /`([^`]+)`|\*\*([^*]+)\*\*|\[([^\]]+)\]\(([^)\s]+)\)/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    parts.push(text.slice(last, m.index));
    if (m[1] !== undefined) parts.push(h("code", {}, m[1]));
    else if (m[2] !== undefined) parts.push(h("strong", {}, m[2]));
    else parts.push(h("a", { href: m[4] }, m[3]));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

// A schema's type, as words and links to the schemas it names.
function typeOf(schema) {
  if (!schema || Object.keys(schema).length === 0) return ["any"];
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return [h("a", { href: `#${schemaId(name)}` }, name)];
  }
  const choices = schema.anyOf || schema.oneOf;
  if (choices) {
    const nullable = choices.some((c) => c.type === "null");
    const rest = choices.filter((c) => c.type !== "null");
    const joined = rest.flatMap((c, i) => (i ? [" | ", ...typeOf(c)] : typeOf(c)));
    return nullable ? [...joined, " or null"] : joined;
  }
  if ("const" in schema) return [h("code", {}, JSON.stringify(schema.const))];
  if (schema.enum) return ["one of ", ...schema.enum.flatMap((v, i) => [i ? ", " : "", h("code", {}, JSON.stringify(v))])];
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array") return ["array of ", ...typeOf(schema.items)];
  if (type === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object" && !schema.properties) {
    return ["map of string to ", ...typeOf(schema.additionalProperties)];
  }
  if (schema.format) return [`${type} (${schema.format})`];
  return [type || "any"];
}

function constraints(schema) {
  const words = [];
  const s = resolve(schema) || {};
  const add = (key, label) => key in s && words.push(`${label} ${JSON.stringify(s[key])}`);
  add("minimum", "≥");
  add("exclusiveMinimum", ">");
  add("maximum", "≤");
  add("exclusiveMaximum", "<");
  add("minLength", "at least, characters:");
  add("maxLength", "at most, characters:");
  add("minItems", "at least, items:");
  add("maxItems", "at most, items:");
  add("pattern", "matches");
  if ("default" in s && s.default !== null) words.push(`default ${JSON.stringify(s.default)}`);
  return words.join("; ");
}

function fields(schema) {
  const s = resolve(schema);
  if (!s || !s.properties) return h("p", {}, "Type: ", typeOf(schema));
  const required = new Set(s.required || []);
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, h("th", {}, "Field"), h("th", {}, "Type"), h("th", {}, "Notes"))),
      h(
        "tbody",
        {},
        Object.entries(s.properties).map(([name, prop]) =>
          h(
            "tr",
            {},
            h("td", { class: "name" }, name, required.has(name) ? h("span", { class: "req" }, " required") : null),
            h("td", {}, typeOf(prop)),
            h("td", {}, inline(prop.description || ""), constraints(prop) ? h("div", { class: "muted" }, constraints(prop)) : null),
          ),
        ),
      ),
    ),
    s.additionalProperties === false ? h("p", { class: "muted" }, "No other fields.") : null,
  );
}

function stream(media) {
  const data = media.schema?.properties?.data;
  const content = data?.else?.contentSchema;
  return h(
    "div",
    {},
    h("p", {}, "Server-sent events: each ", h("code", {}, "data:"), " line holds ", content ? typeOf(content) : "JSON", "; the last is ", h("code", {}, "data: [DONE]"), "."),
    media.schema?.description ? markdown(media.schema.description) : null,
  );
}

function body(content) {
  return Object.entries(content || {}).map(([type, media]) =>
    h(
      "div",
      {},
      h("p", {}, h("code", {}, type), media.schema && type !== "text/event-stream" ? [": ", ...typeOf(media.schema)] : null),
      type === "text/event-stream" ? stream(media) : media.schema?.$ref ? h("details", {}, h("summary", {}, "Fields"), fields(media.schema)) : null,
    ),
  );
}

function responses(operation) {
  const rows = Object.entries(operation.responses || {}).map(([status, response]) => {
    const headers = Object.keys(response.headers || {});
    return h(
      "tr",
      {},
      h("td", {}, h("span", { class: `status ${status.startsWith("2") ? "ok" : "error"}` }, status)),
      h(
        "td",
        {},
        markdown(response.description),
        status.startsWith("2") ? body(response.content) : null,
        headers.length ? h("p", { class: "muted" }, "Headers: ", headers.flatMap((name, i) => [i ? ", " : "", h("code", {}, name)])) : null,
      ),
    );
  });
  return h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Answer"))), h("tbody", {}, rows)));
}

function parameters(operation) {
  const list = (operation.parameters || []).map(resolve);
  if (!list.length) return null;
  return [
    h("h4", {}, "Parameters"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "In"), h("th", {}, "Type"), h("th", {}, "Notes"))),
        h(
          "tbody",
          {},
          list.map((p) =>
            h(
              "tr",
              {},
              h("td", { class: "name" }, p.name, p.required ? h("span", { class: "req" }, " required") : null),
              h("td", {}, p.in),
              h("td", {}, typeOf(p.schema)),
              h("td", {}, inline(p.description || ""), constraints(p.schema || {}) ? h("div", { class: "muted" }, constraints(p.schema)) : null),
            ),
          ),
        ),
      ),
    ),
  ];
}

function auth(operation) {
  const security = operation.security || [];
  if (!security.length) return h("p", { class: "auth" }, "No authentication.");
  const ways = security.map((req) => Object.keys(req).map((name) => SCHEMES[name] || name).join(", with "));
  return h("p", { class: "auth" }, h("strong", {}, "Authentication: "), ways.join("; or "), ".");
}

function operationCard(group) {
  const { method, path, operation, also } = group;
  const id = operation.operationId || `${method}-${path}`;
  const request = operation.requestBody;
  return h(
    "article",
    { class: "operation", id },
    h("h3", {}, h("span", { class: `method ${method}` }, method.toUpperCase()), h("span", { class: "path" }, path), h("span", { class: "muted" }, operation.summary || "")),
    also.length ? h("p", { class: "also" }, "Also at ", also.flatMap((p, i) => [i ? ", " : "", h("code", {}, p)]), ".") : null,
    auth(operation),
    markdown(operation.description),
    parameters(operation),
    request ? [h("h4", {}, "Request body"), body(request.content)] : null,
    h("h4", {}, "Responses"),
    responses(operation),
  );
}

// Operations grouped by tag, each shown once under its canonical path (/v1/…).
function groups() {
  const byKey = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      const alias = ALIASES.find((prefix) => path.startsWith(prefix));
      const canonical = alias ? `/v1/${path.slice(alias.length)}` : path;
      const key = `${method} ${canonical}`;
      if (byKey.has(key)) byKey.get(key).also.push(path);
      else byKey.set(key, { method, path: canonical, operation, also: alias ? [path] : [] });
    }
  }
  const tags = (doc.tags || []).map((t) => t.name);
  const sections = new Map(tags.map((name) => [name, []]));
  for (const group of byKey.values()) {
    const tag = (group.operation.tags || ["Other"])[0];
    if (!sections.has(tag)) sections.set(tag, []);
    sections.get(tag).push(group);
  }
  return [...sections.entries()].filter(([, list]) => list.length);
}

function render() {
  const main = document.getElementById("main");
  const toc = document.getElementById("toc");
  const sections = groups();
  const descriptions = Object.fromEntries((doc.tags || []).map((t) => [t.name, t.description]));
  document.title = `${doc.info.title} API reference`;
  toc.replaceChildren(
    ...[
    ...sections.map(([tag, list]) => [
      h("h2", {}, tag),
      h("ul", {}, list.map((g) => h("li", {}, h("a", { href: `#${g.operation.operationId}` }, h("span", { class: `method ${g.method}` }, g.method.toUpperCase()), g.path)))),
    ]),
    h("h2", {}, "Schemas"),
    h("ul", {}, h("li", {}, h("a", { href: "#schemas" }, "Every schema"))),
    ].flat(Infinity),
  );
  const schemas = doc.components?.schemas || {};
  main.replaceChildren(
    ...[
    h("h1", {}, `${doc.info.title} API`, h("span", { class: "muted" }, ` ${doc.info.version} · OpenAPI ${doc.openapi}`)),
    markdown(doc.info.description),
    ...sections.map(([tag, list]) => [h("h2", { class: "tag", id: `tag-${tag}` }, tag), markdown(descriptions[tag]), list.map(operationCard)]),
    h("h2", { class: "tag", id: "schemas" }, "Schemas"),
    Object.entries(schemas).map(([name, schema]) =>
      h("section", { class: "component", id: schemaId(name) }, h("div", { class: "schema" }, h("h3", {}, name), markdown(schema.description), fields(schema))),
    ),
    ].flat(Infinity).filter(Boolean),
  );
  if (location.hash) document.getElementById(decodeURIComponent(location.hash.slice(1)))?.scrollIntoView();
}

async function load() {
  try {
    const answer = await fetch("/openapi.json");
    if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
    doc = await answer.json();
  } catch (error) {
    document.getElementById("main").replaceChildren(h("p", { role: "alert" }, `Could not load /openapi.json: ${error.message}`));
    return;
  }
  render();
}

load();
