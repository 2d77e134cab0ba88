// The admin side beyond users: deployments (health, test, disable), every user's requests, the audit log.
import { api } from "./api.js";
import { field, fmt, h, toast, when } from "./dom.js";

const TABS = [
  ["admin", "Users"],
  ["admin/deployments", "Deployments"],
  ["admin/codes", "Codes"],
  ["admin/groups", "Groups"],
  ["admin/requests", "Requests"],
  ["admin/audit", "Audit log"],
];

// The admin pages' own navigation, above each of them.
export function adminTabs(current) {
  return h(
    "nav",
    { class: "subnav", "aria-label": "Admin" },
    ...TABS.map(([path, label]) => h("a", { href: `#/${path}`, "aria-current": path === current ? "page" : "false" }, label)),
  );
}

function fail(error) {
  toast(error.message || String(error), "error");
}

// Newer / "1–50 of 120" / Older, for a list read a page at a time.
export function pagerOf(offset, size, total, go) {
  return [
    h("button", { class: "secondary small", disabled: offset === 0, onclick: () => go(Math.max(0, offset - size)) }, "Newer"),
    ` ${total ? offset + 1 : 0}–${Math.min(offset + size, total)} of ${fmt(total)} `,
    h("button", { class: "secondary small", disabled: offset + size >= total, onclick: () => go(offset + size) }, "Older"),
  ];
}

const ms = (value) => (value === null || value === undefined ? "—" : `${fmt(Math.round(value))} ms`);
const stateBadge = (state) => h("span", { class: state === "up" ? "badge" : state === "cooling" ? "badge warn" : "badge off" }, state);

// ---- deployments -------------------------------------------------------------------------------

export async function deploymentsPage(show) {
  const body = h("tbody");
  const result = h("div", { class: "card", hidden: true, role: "status", "data-testid": "test-result" });
  const stamp = h("p", { class: "muted" });

  async function test(d, button) {
    button.disabled = true;
    result.hidden = false;
    result.replaceChildren(`Testing ${d.name}…`);
    try {
      const r = await api("POST", `/api/admin/deployments/${d.id}/test`);
      result.replaceChildren(
        h("strong", {}, `${d.name}: `),
        r.ok ? h("span", { class: "badge" }, "answered") : h("span", { class: "badge off" }, "failed"),
        ` in ${fmt(r.latency_ms)} ms. `,
        r.ok ? h("q", {}, r.reply) : h("code", {}, r.error),
      );
    } catch (error) {
      fail(error);
    } finally {
      button.disabled = false;
    }
  }

  async function toggle(d) {
    const disabling = d.state !== "disabled";
    if (disabling && !confirm(`Disable ${d.name}? No replica will send it requests until it is enabled.`)) return;
    try {
      await api("POST", `/api/admin/deployments/${d.id}/disable`, { disabled: disabling });
      toast(disabling ? "Deployment disabled" : "Deployment enabled");
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  async function refresh() {
    const { data } = await api("GET", "/api/admin/deployments");
    body.replaceChildren(
      ...data.map((d) => {
        const testButton = h("button", { class: "secondary small", "aria-label": `Test ${d.id}` }, "Test");
        testButton.addEventListener("click", () => test(d, testButton));
        const switchButton = h(
          "button",
          { class: d.state === "disabled" ? "small" : "danger small", onclick: () => toggle(d), "aria-label": `${d.state === "disabled" ? "Enable" : "Disable"} ${d.id}` },
          d.state === "disabled" ? "Enable" : "Disable",
        );
        // What to act on first (a phone shows these without scrolling), the figures after.
        return h(
          "tr",
          { "data-deployment": d.id },
          h("td", {}, h("strong", {}, d.model), h("div", {}, d.name), h("small", { class: "muted" }, `${d.kind} · id ${d.id}`)),
          h("td", {}, stateBadge(d.state), d.automatic ? h("div", {}, h("small", { class: "muted" }, "automatic")) : null),
          h("td", {}, h("div", { class: "actions" }, testButton, switchButton)),
          h("td", {}, fmt(d.in_flight)),
          h("td", {}, fmt(d.requests)),
          h("td", {}, fmt(d.errors)),
          h("td", {}, `${ms(d.p50_ms)} / ${ms(d.p95_ms)}`),
          h("td", { class: "wrapcell" }, d.last_error ? [h("code", {}, d.last_error), h("br"), h("small", { class: "muted" }, when(d.last_error_at))] : "—"),
        );
      }),
    );
    if (!data.length) body.append(h("tr", {}, h("td", { colspan: 8 }, "No deployments.")));
    stamp.textContent = `Figures over the last 15 minutes, across every replica. Read ${new Date().toLocaleTimeString()}.`;
  }

  show(
    h("h1", {}, "Admin"),
    adminTabs("admin/deployments"),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Deployments"),
      stamp,
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { "data-testid": "deployments" },
          h("thead", {}, h("tr", {}, ...["Deployment", "State", "", "In flight", "Requests", "Errors", "p50 / p95", "Last error"].map((c) => h("th", { scope: "col" }, c)))),
          body,
        ),
      ),
      h("button", { class: "secondary small", onclick: () => refresh().catch(fail) }, "Refresh"),
    ),
    result,
  );
  await refresh();
  // Kept fresh while the page is open (one timer, whichever visit to the page made it).
  clearInterval(freshness);
  freshness = setInterval(() => (location.hash === "#/admin/deployments" ? refresh().catch(() => {}) : clearInterval(freshness)), 5000);
}

let freshness;

// ---- the request log ---------------------------------------------------------------------------

const isoOf = (local) => (local ? new Date(local).toISOString() : "");

export async function requestsPage(show) {
  const user = h("input", { placeholder: "email or id", maxlength: 320 });
  const token = h("input", { placeholder: "sk-… prefix or id", maxlength: 100 });
  const model = h("input", { placeholder: "any", maxlength: 200 });
  const status = h("select", {}, ...["", "ok", "error", "cancelled"].map((s) => h("option", { value: s }, s || "Any status")));
  const since = h("input", { type: "datetime-local" });
  const until = h("input", { type: "datetime-local" });
  const body = h("tbody");
  const pager = h("p", { class: "pager" });
  const exportLink = h("a", { class: "button secondary", download: "", "data-testid": "export-csv" }, "Export CSV");
  let offset = 0;
  const size = 50;

  function params() {
    const out = new URLSearchParams();
    const values = { user: user.value.trim(), token: token.value.trim(), model: model.value.trim(), status: status.value, since: isoOf(since.value), until: isoOf(until.value) };
    for (const [k, v] of Object.entries(values)) if (v) out.set(k, v);
    return out;
  }

  async function page() {
    const query = params();
    exportLink.href = `/api/admin/requests.csv?${query}`;
    query.set("limit", size);
    query.set("offset", offset);
    try {
      const { data, total } = await api("GET", `/api/admin/requests?${query}`);
      body.replaceChildren(
        ...data.map((r) =>
          h(
            "tr",
            {},
            h("td", {}, when(r.time)),
            h("td", {}, r.email ?? (r.user_id === null ? "master key" : `#${r.user_id}`)),
            h("td", {}, r.token ? h("code", {}, r.token) : "—"),
            h("td", {}, r.model),
            h("td", {}, `${fmt(r.prompt_tokens)} + ${fmt(r.completion_tokens)}`),
            h("td", {}, fmt(r.cost)),
            h("td", {}, `${fmt(r.latency_ms)} ms`),
            h("td", {}, r.status + (r.error_code ? ` (${r.error_code})` : "")),
            h("td", {}, h("code", {}, r.trace_id)),
          ),
        ),
      );
      if (!data.length) body.append(h("tr", {}, h("td", { colspan: 9 }, "No requests match.")));
      pager.replaceChildren(...pagerOf(offset, size, total, (next) => ((offset = next), page())));
    } catch (error) {
      fail(error);
    }
  }

  show(
    h("h1", {}, "Admin"),
    adminTabs("admin/requests"),
    h(
      "form",
      { class: "card row wrap", onsubmit: (e) => (e.preventDefault(), (offset = 0), page()) },
      field("User", user),
      field("Token", token),
      field("Model", model),
      field("Status", status),
      field("Since", since),
      field("Until", until),
      h("button", { type: "submit" }, "Filter"),
      exportLink,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Requests of every user"),
      h("div", { class: "scroll" }, h("table", { "data-testid": "admin-request-log" }, h("thead", {}, h("tr", {}, ...["Time", "User", "Token", "Model", "Tokens", "Cost", "Latency", "Status", "Trace id"].map((c) => h("th", { scope: "col" }, c)))), body)),
      pager,
    ),
  );
  await page();
}

// ---- the audit log -----------------------------------------------------------------------------

const who = (e) => (e.actor === "admin" ? e.actor_email ?? `admin #${e.actor_id}` : e.actor === "operator" ? "operator (CLI)" : "chatgate (automatic)");

export async function auditPage(show) {
  const action = h("input", { placeholder: "e.g. deployment or user.grant", maxlength: 64 });
  const body = h("tbody");
  const pager = h("p", { class: "pager" });
  let offset = 0;
  const size = 50;

  async function page() {
    const query = new URLSearchParams({ limit: size, offset });
    if (action.value.trim()) query.set("action", action.value.trim());
    try {
      const { data, total } = await api("GET", `/api/admin/audit?${query}`);
      body.replaceChildren(
        ...data.map((e) =>
          h("tr", {}, h("td", {}, when(e.time)), h("td", {}, who(e)), h("td", {}, h("code", {}, e.action)), h("td", {}, e.target), h("td", { class: "wrapcell" }, Object.keys(e.detail).length ? h("code", {}, JSON.stringify(e.detail)) : "")),
        ),
      );
      if (!data.length) body.append(h("tr", {}, h("td", { colspan: 5 }, "Nothing yet.")));
      pager.replaceChildren(...pagerOf(offset, size, total, (next) => ((offset = next), page())));
    } catch (error) {
      fail(error);
    }
  }

  show(
    h("h1", {}, "Admin"),
    adminTabs("admin/audit"),
    h("form", { class: "card row wrap", onsubmit: (e) => (e.preventDefault(), (offset = 0), page()) }, field("Action", action), h("button", { type: "submit" }, "Filter")),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Audit log"),
      h("div", { class: "scroll" }, h("table", { "data-testid": "audit-log" }, h("thead", {}, h("tr", {}, ...["Time", "Who", "Action", "Target", "Detail"].map((c) => h("th", { scope: "col" }, c)))), body)),
      pager,
    ),
  );
  await page();
}
