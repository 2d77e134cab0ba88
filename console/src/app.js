// chatgate's console: a hash-routed single page over the /api JSON endpoints and the chat API.
import uPlot from "uplot";
import { adminTabs, auditPage, deploymentsPage, requestsPage } from "./admin.js";
import { api, keys, session } from "./api.js";
import { codesPage, costOf, estimateInto, groupSelect, groupsPage, pricesFor, pricingPage, redeemCard } from "./billing.js";
import { checkEmailPage, deletionCard, forgotPage, resetPage, verifyPage } from "./recovery.js";
import { APIS, samples } from "./codegen.js";
import { copy, field, fmt, h, toast, when } from "./dom.js";

// The images and links a reply's markdown holds (a drawing model's picture and its download link),
// as real elements. Only http(s) URLs; everything is built as DOM nodes, never as HTML text.
function mediaOf(text) {
  const found = [];
  const pattern = /(!?)\[([^\]\n]*)\]\((https?:\/\/[^)\s]+)\)/g;
  for (const [, bang, label, url] of text.matchAll(pattern)) {
    if (bang) found.push(h("img", { src: url, alt: label, loading: "lazy" }));
    else found.push(h("a", { href: url, target: "_blank", rel: "noopener" }, label));
  }
  return found;
}

// The console's Content-Security-Policy allows no style attributes: sizes go through the CSSOM.
function widthOf(el, percent) {
  el.style.width = `${percent}%`;
  return el;
}

const main = document.getElementById("main");

function show(...nodes) {
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
}

function fail(error) {
  toast(error.message || String(error), "error");
}

async function loadMe() {
  try {
    const me = await api("GET", "/api/me");
    session.user = me.user;
    session.csrf = me.csrf_token;
    session.limits = me.limits;
  } catch {
    session.user = null;
    session.csrf = null;
    session.limits = null;
  }
  document.getElementById("nav").hidden = !session.user;
  document.getElementById("nav-admin").hidden = !session.user?.is_admin;
}

// ---- sign in / sign up ---------------------------------------------------------------------

async function loginPage() {
  const email = h("input", { type: "email", autocomplete: "username", required: true });
  const password = h("input", { type: "password", autocomplete: "current-password", required: true, minlength: 8 });
  const invite = h("input", { type: "text", autocomplete: "off", spellcheck: "false" });
  // How accounts are opened here: open, by invite code, or closed (accounts made by the operator).
  const { mode } = await api("GET", "/api/signup").catch(() => ({ mode: "open" }));
  async function go(path) {
    const body = { email: email.value, password: password.value };
    if (path === "/api/signup" && mode === "invite") body.invite = invite.value;
    try {
      const me = await api("POST", path, body);
      if (me.verification_required) return checkEmailPage(show, me.user.email);
      session.user = me.user;
      session.csrf = me.csrf_token;
      await loadMe();
      location.hash = "#/tokens";
    } catch (error) {
      fail(error);
    }
  }
  const signUp = h("button", { type: "button", class: "secondary", onclick: () => go("/api/signup") }, "Create account");
  const blurb = {
    open: "An OpenAI-compatible Chat Completions API. New accounts get a free quota.",
    invite: "An OpenAI-compatible Chat Completions API. New accounts need an invite code and get a free quota.",
    closed: "An OpenAI-compatible Chat Completions API. Sign-up is closed: ask the operator for an account.",
  }[mode];
  const form = h(
    "form",
    { class: "card narrow", onsubmit: (e) => (e.preventDefault(), go("/api/login")) },
    h("h1", {}, "Sign in to chatgate"),
    h("p", {}, blurb),
    field("Email", email),
    field("Password", password, "At least 8 characters."),
    mode === "invite" && field("Invite code", invite, "Only to create an account."),
    h("div", { class: "row" }, h("button", { type: "submit" }, "Sign in"), mode !== "closed" && signUp),
    h("p", {}, h("a", { href: "#/forgot" }, "Forgot your password?")),
  );
  show(form);
}

// ---- tokens --------------------------------------------------------------------------------

async function tokensPage() {
  const list = h("tbody");
  const reveal = h("div", { class: "reveal", hidden: true });
  const name = h("input", { value: "my token", maxlength: 100 });
  const balance = h("p", { "data-testid": "balance" });

  async function refresh() {
    // The balance changes with every API call, not only here: read it afresh with the tokens.
    const [{ data }, me] = await Promise.all([api("GET", "/api/tokens"), api("GET", "/api/me")]);
    session.user = me.user;
    balance.textContent = `Balance: ${fmt(session.user.credits)} credits.`;
    list.replaceChildren(
      ...data.map((t) =>
        h(
          "tr",
          {},
          h("td", {}, t.name),
          h("td", {}, h("code", {}, `${t.prefix}…`)),
          h("td", {}, when(t.created_at)),
          h("td", {}, when(t.last_used_at)),
          h("td", {}, `${fmt(t.spent)} used · ${t.quota_cap === null ? `${fmt(session.user.credits)} left (balance)` : `${fmt(Math.max(0, t.quota_cap - t.spent))} left`}`),
          h("td", {}, t.revoked_at ? h("span", { class: "badge off" }, "revoked") : h("span", { class: "badge" }, "active")),
          h(
            "td",
            { class: "actions" },
            h("button", { class: "secondary small", onclick: () => rename(t), "aria-label": `Rename ${t.name}` }, "Rename"),
            !t.revoked_at &&
              h("button", { class: "danger small", onclick: () => revoke(t), "aria-label": `Revoke ${t.name}` }, "Revoke"),
          ),
        ),
      ),
    );
    if (!data.length) list.append(h("tr", {}, h("td", { colspan: 7 }, "No tokens yet: acquire one.")));
  }

  async function acquire() {
    try {
      const created = await api("POST", "/api/tokens", { name: name.value || "my token" });
      keys.put(created.id, created.key);
      const secret = h("code", { class: "secret", "data-testid": "new-key" }, created.key);
      reveal.replaceChildren(
        h("strong", {}, "Your new token. It is shown only this once:"),
        secret,
        h("button", { onclick: () => copy(created.key, "Token copied") }, "Copy"),
      );
      reveal.hidden = false;
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  async function rename(t) {
    const next = prompt("New name", t.name);
    if (!next) return;
    try {
      await api("PATCH", `/api/tokens/${t.id}`, { name: next });
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  async function revoke(t) {
    if (!confirm(`Revoke "${t.name}"? Programs using it will get 401.`)) return;
    try {
      await api("DELETE", `/api/tokens/${t.id}`);
      keys.drop(t.id);
      toast("Token revoked");
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  show(
    h("h1", {}, "API tokens"),
    balance,
    h("div", { class: "card row wrap" }, field("Name", name), h("button", { onclick: acquire }, "Acquire")),
    reveal,
    redeemCard(refresh),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        {},
        h("caption", { class: "sr-only" }, "Your API tokens"),
        h("thead", {}, h("tr", {}, ...["Name", "Token", "Created", "Last used", "Quota", "State", ""].map((c) => h("th", { scope: "col" }, c)))),
        list,
      ),
    ),
  );
  await refresh();
}

// ---- playground ----------------------------------------------------------------------------

async function playgroundPage() {
  const { data: tokens } = await api("GET", "/api/tokens");
  const known = keys.all();
  const usable = tokens.filter((t) => !t.revoked_at && known[t.id]);
  const tokenSelect = h(
    "select",
    {},
    ...usable.map((t) => h("option", { value: known[t.id] }, `${t.name} (${t.prefix}…)`)),
    h("option", { value: "" }, "Paste a token…"),
  );
  const pasted = h("input", { type: "password", placeholder: "sk-…", hidden: usable.length > 0, "aria-label": "Token" });
  tokenSelect.addEventListener("change", () => {
    pasted.hidden = tokenSelect.value !== "";
    loadModels();
    render();
  });
  pasted.addEventListener("change", () => (loadModels(), render()));
  const key = () => tokenSelect.value || pasted.value;

  const model = h("select", {});
  const apiSelect = h("select", {}, ...Object.entries(APIS).map(([value, spec]) => h("option", { value }, spec.label)));
  const stream = h("input", { type: "checkbox", checked: true });
  const temperature = h("input", { type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const maxTokens = h("input", { type: "number", min: 1, max: 4096, value: 64 });
  const rows = h("div", { class: "messages" });
  const reply = h("div", { class: "reply", "aria-live": "polite", "data-testid": "reply" });
  const media = h("div", { class: "media", "data-testid": "reply-media" });
  const raw = h("pre", { class: "raw", "data-testid": "raw" });
  const usage = h("p", { class: "usage", "data-testid": "usage" });
  const cost = h("p", { class: "usage", "data-testid": "cost" });
  let estimating;
  const code = h("pre", { class: "code", "data-testid": "code" });
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "Code samples" });
  let language = "Python (openai)";

  function addRow(role = "user", content = "") {
    const roleSelect = h("select", { "aria-label": "Role" }, ...["system", "user", "assistant"].map((r) => h("option", { value: r, selected: r === role }, r)));
    const text = h("textarea", { rows: 2, "aria-label": "Message" }, content);
    const row = h("div", { class: "message" }, roleSelect, text, h("button", { class: "secondary small", "aria-label": "Remove message", onclick: () => (row.remove(), render()) }, "✕"));
    for (const el of [roleSelect, text]) el.addEventListener("input", render);
    rows.append(row);
    render();
  }

  // The request in the chosen API's shape: system messages become its instructions (Responses)
  // or its system prompt (Messages); the output limit is each API's own field.
  const messagesOf = () =>
    [...rows.querySelectorAll(".message")].map((row) => ({
      role: row.querySelector("select").value,
      content: row.querySelector("textarea").value,
    }));

  // The request as Chat Completions has it: what every API is metered as, so what the estimate reads.
  const chatBody = () => ({ model: model.value, messages: messagesOf(), temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) });

  function body() {
    const messages = messagesOf();
    const settings = { temperature: Number(temperature.value) };
    const system = messages.filter((m) => m.role === "system").map((m) => m.content).join("\n\n");
    const turns = messages.filter((m) => m.role !== "system");
    let out;
    if (apiSelect.value === "responses") {
      out = { model: model.value, input: turns, ...settings, max_output_tokens: Number(maxTokens.value) };
      if (system) out.instructions = system;
    } else if (apiSelect.value === "messages") {
      out = { model: model.value, max_tokens: Number(maxTokens.value), messages: turns, ...settings };
      if (system) out.system = system;
    } else out = { model: model.value, messages, ...settings, max_tokens: Number(maxTokens.value) };
    if (stream.checked) out.stream = true;
    return out;
  }

  function render() {
    const all = samples({ base: location.origin, key: key() || "YOUR_TOKEN", api: apiSelect.value, body: body() });
    if (!(language in all)) language = Object.keys(all).find((name) => name.startsWith("Python (") && name !== "Python (requests)");
    tabs.replaceChildren(
      ...Object.keys(all).map((name) =>
        h("button", { role: "tab", "aria-selected": String(name === language), class: name === language ? "tab on" : "tab", onclick: () => ((language = name), render()) }, name),
      ),
    );
    code.textContent = all[language];
    const asked = JSON.stringify(chatBody());
    if (model.value && asked !== estimated) {
      estimated = asked; // only a changed request is estimated again (not a code tab picked)
      clearTimeout(estimating);
      estimating = setTimeout(estimate, 400);
    }
  }

  // The estimate of the request as it stands, unless a request was tried meanwhile: an estimate
  // answered late must not replace what that request cost.
  let tries = 0;
  let estimated = null;
  async function estimate() {
    const asked = tries;
    const scratch = h("p");
    await estimateInto(scratch, chatBody());
    if (asked === tries) cost.textContent = scratch.textContent;
  }

  async function showCost(data) {
    const spent = costOf(await pricesFor(data.model || model.value), data);
    if (spent !== null) cost.textContent = `This request cost ${fmt(spent)} credits.`;
  }

  async function loadModels() {
    if (!key()) return;
    try {
      const response = await fetch("/v1/models", { headers: { Authorization: `Bearer ${key()}` } });
      const body = await response.json().catch(() => null);
      if (!response.ok) throw new Error(body?.error?.message || `HTTP ${response.status}`);
      const { data } = body;
      const chat = data.filter((m) => m.type !== "embedding"); // embedding models answer /v1/embeddings only
      model.replaceChildren(...chat.map((m) => h("option", { value: m.id }, m.id)));
      render();
    } catch (error) {
      fail(error);
    }
  }

  // The usage an answer reports, and what it cost at the caller's prices.
  function showUsage(prompt, completion, answeredBy) {
    usage.textContent = `Usage: ${prompt} prompt + ${completion} completion = ${prompt + completion} tokens`;
    showCost({ model: answeredBy, prompt_tokens: prompt, completion_tokens: completion });
  }

  // A whole answer's text and usage, per API.
  function readWhole(data) {
    if (apiSelect.value === "responses") {
      reply.textContent = data.output.filter((i) => i.type === "message").flatMap((i) => i.content).map((p) => p.text ?? p.refusal ?? "").join("");
      if (data.usage) showUsage(data.usage.input_tokens, data.usage.output_tokens, data.model);
    } else if (apiSelect.value === "messages") {
      reply.textContent = data.content.filter((b) => b.type === "text").map((b) => b.text).join("");
      showUsage(data.usage.input_tokens, data.usage.output_tokens, data.model);
    } else {
      reply.textContent = data.choices[0].message.content;
      showUsage(data.usage.prompt_tokens, data.usage.completion_tokens, data.model);
    }
  }

  // One streamed payload: its text and, at the end, its usage; a failure in the stream is shown.
  let answeredBy = null; // a Messages stream names its model in its first event only
  function readEvent(event) {
    if (apiSelect.value === "responses") {
      if (event.type === "response.output_text.delta") reply.textContent += event.delta;
      if (event.response?.usage) showUsage(event.response.usage.input_tokens, event.response.usage.output_tokens, event.response.model);
      if (event.type === "response.failed") fail(new Error(event.response.error?.message || "The response failed."));
    } else if (apiSelect.value === "messages") {
      if (event.type === "content_block_delta") reply.textContent += event.delta.text ?? "";
      if (event.type === "message_start") answeredBy = event.message.model;
      if (event.type === "message_delta") showUsage(event.usage.input_tokens ?? 0, event.usage.output_tokens, answeredBy);
      if (event.type === "error") fail(new Error(event.error.message));
    } else {
      if (event.error) fail(new Error(event.error.message));
      if (event.choices?.length) reply.textContent += event.choices[0].delta.content ?? "";
      if (event.usage) showUsage(event.usage.prompt_tokens, event.usage.completion_tokens, event.model);
    }
  }

  async function tryIt() {
    clearTimeout(estimating);
    tries += 1;
    reply.textContent = "";
    raw.textContent = "";
    usage.textContent = "";
    media.replaceChildren();
    const request = body();
    if (request.stream && apiSelect.value === "chat") request.stream_options = { include_usage: true };
    const response = await fetch(APIS[apiSelect.value].path, {
      method: "POST",
      headers: { ...APIS[apiSelect.value].headers(key()), "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    if (!request.stream || !response.ok) {
      const data = await response.json();
      raw.textContent = JSON.stringify(data, null, 2);
      if (!response.ok) return fail(new Error(data.error?.message || `HTTP ${response.status}`));
      readWhole(data);
      media.replaceChildren(...mediaOf(reply.textContent));
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const chunks = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const frames = buffer.split("\n\n");
      buffer = frames.pop();
      for (const frame of frames) {
        // Chat chunks are bare "data:" lines; the Responses and Messages events have an "event:" line first.
        const data = frame.split("\n").find((line) => line.startsWith("data: "))?.slice(6);
        if (!data || data === "[DONE]") continue;
        const event = JSON.parse(data);
        chunks.push(event);
        readEvent(event);
      }
    }
    raw.textContent = chunks.map((c) => JSON.stringify(c)).join("\n");
    media.replaceChildren(...mediaOf(reply.textContent));
  }

  for (const el of [stream, temperature, maxTokens, model, apiSelect]) el.addEventListener("input", render);
  show(
    h("h1", {}, "Playground"),
    h(
      "div",
      { class: "grid" },
      h(
        "section",
        { class: "card", "aria-label": "Request" },
        field("Authorization", tokenSelect, usable.length ? null : "Acquire a token on the Tokens page, or paste one."),
        pasted,
        field("API", apiSelect),
        field("Model", model),
        h("fieldset", {}, h("legend", {}, "Messages"), rows, h("button", { class: "secondary small", onclick: () => addRow() }, "Add message")),
        h("div", { class: "row wrap" }, field("Temperature", temperature), field("Max tokens", maxTokens), h("label", { class: "check" }, stream, " Stream")),
        h("button", { onclick: () => tryIt().catch(fail) }, "Try"),
        h("h2", {}, "Reply"),
        reply,
        media,
        usage,
        cost,
        h("details", {}, h("summary", {}, "Raw JSON"), raw),
      ),
      h(
        "section",
        { class: "card", "aria-label": "Code" },
        h("h2", {}, "Code"),
        tabs,
        code,
        h("button", { class: "secondary", onclick: () => copy(code.textContent, "Code copied") }, "Copy code"),
      ),
    ),
  );
  addRow("system", "You are a helpful assistant.");
  addRow("user", "Say hello in one short sentence.");
  await loadModels();
}

// ---- usage ---------------------------------------------------------------------------------

// The usage log's API names, as people know them.
const API_LABELS = {
  "chat.completions": "Chat Completions",
  responses: "Responses",
  messages: "Messages",
  "images.generations": "Images",
  embeddings: "Embeddings",
};

async function usagePage() {
  const summary = await api("GET", "/api/usage");
  const log = h("tbody");
  const modelFilter = h("select", {}, h("option", { value: "" }, "All models"), ...summary.models.map((m) => h("option", { value: m.model }, m.model)));
  const statusFilter = h("select", {}, ...["", "ok", "error", "cancelled"].map((s) => h("option", { value: s }, s || "Any status")));
  const pager = h("p", { class: "pager" });
  let offset = 0;
  const size = 20;

  async function page() {
    const params = new URLSearchParams({ limit: size, offset });
    if (modelFilter.value) params.set("model", modelFilter.value);
    if (statusFilter.value) params.set("status", statusFilter.value);
    const { data, total } = await api("GET", `/api/usage/requests?${params}`);
    log.replaceChildren(
      ...data.map((r) =>
        h("tr", {}, h("td", {}, when(r.time)), h("td", {}, r.model), h("td", {}, API_LABELS[r.api] ?? r.api), h("td", {}, `${fmt(r.prompt_tokens)} + ${fmt(r.completion_tokens)}`), h("td", {}, fmt(r.cost)), h("td", {}, `${fmt(r.latency_ms)} ms`), h("td", {}, r.status + (r.error_code ? ` (${r.error_code})` : "")), h("td", {}, h("code", {}, r.trace_id))),
      ),
    );
    pager.replaceChildren(
      h("button", { class: "secondary small", disabled: offset === 0, onclick: () => ((offset = Math.max(0, offset - size)), page()) }, "Newer"),
      ` ${total ? offset + 1 : 0}–${Math.min(offset + size, total)} of ${total} `,
      h("button", { class: "secondary small", disabled: offset + size >= total, onclick: () => ((offset += size), page()) }, "Older"),
    );
  }
  for (const f of [modelFilter, statusFilter]) f.addEventListener("change", () => ((offset = 0), page()));

  const chart = h("div", { class: "chart", role: "img", "aria-label": "Tokens per day" });
  const maxCost = Math.max(1, ...summary.models.map((m) => m.credits_used));
  const maxApiCost = Math.max(1, ...summary.apis.map((a) => a.credits_used));
  show(
    h("h1", {}, "Usage"),
    h(
      "div",
      { class: "stats" },
      h("div", { class: "stat" }, h("span", {}, "Requests"), h("strong", {}, fmt(summary.requests))),
      h("div", { class: "stat" }, h("span", {}, "Tokens"), h("strong", {}, fmt(summary.total_tokens))),
      h("div", { class: "stat" }, h("span", {}, "Credits used"), h("strong", {}, fmt(summary.credits_used))),
      h("div", { class: "stat" }, h("span", {}, "Credits left"), h("strong", { "data-testid": "credits-left" }, fmt(summary.credits_left))),
    ),
    h("section", { class: "card" }, h("h2", {}, "Tokens and cost per day"), chart),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Per model"),
      ...summary.models.map((m) =>
        h("div", { class: "bar" }, h("span", {}, m.model), widthOf(h("div", { class: "fill" }), (100 * m.credits_used) / maxCost), h("small", {}, `${fmt(m.total_tokens)} tokens, ${fmt(m.credits_used)} credits`)),
      ),
    ),
    h(
      "section",
      { class: "card", "data-testid": "per-api" },
      h("h2", {}, "Per API"),
      ...summary.apis.map((a) =>
        h("div", { class: "bar" }, h("span", {}, API_LABELS[a.api] ?? a.api), widthOf(h("div", { class: "fill" }), (100 * a.credits_used) / maxApiCost), h("small", {}, `${fmt(a.requests)} requests, ${fmt(a.total_tokens)} tokens, ${fmt(a.credits_used)} credits`)),
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Requests"),
      h("div", { class: "row wrap" }, field("Model", modelFilter), field("Status", statusFilter)),
      h("div", { class: "scroll" }, h("table", { "data-testid": "request-log" }, h("thead", {}, h("tr", {}, ...["Time", "Model", "API", "Tokens", "Cost", "Latency", "Status", "Trace id"].map((c) => h("th", { scope: "col" }, c)))), log)),
      pager,
    ),
  );
  // Each (UTC) date at midnight on the browser's clock, so its bars stand over the tick with its date.
  const days = summary.daily.map((d) => Date.parse(`${d.date}T00:00`) / 1000);
  if (days.length) {
    // A day either side of the data, so a single day is a bar, not a three-year axis. Worked out from
    // the days themselves: uPlot widens a range of one point by far more than a day before asking.
    const first = Math.min(...days) - 86400;
    const last = Math.max(...days) + 86400;
    const width = Math.min(chart.clientWidth || 600, 900);
    new uPlot(
      {
        width,
        height: 220,
        series: [
          {},
          { label: "Prompt tokens", stroke: "#2563eb", fill: "#2563eb55", paths: uPlot.paths.bars({ size: [0.3, 40], align: -1 }) },
          { label: "Completion tokens", stroke: "#16a34a", fill: "#16a34a55", paths: uPlot.paths.bars({ size: [0.3, 40], align: 1 }) },
          { label: "Credits", stroke: "#d97706", scale: "c", points: { show: true, size: 7 } },
        ],
        axes: [{ incrs: [1, 2, 7, 14, 30, 91, 182, 365].map((n) => n * 86400) }, { label: "tokens" }, { scale: "c", side: 1, label: "credits", grid: { show: false } }],
        // The time span shown, in seconds, on the chart's element (data-from, data-to).
        hooks: { setScale: [(u, scale) => scale === "x" && Object.assign(chart.dataset, { from: u.scales.x.min, to: u.scales.x.max })] },
        scales: { x: { time: true, range: () => [first, last] }, y: { range: (u, min, max) => [0, max * 1.15 || 1] }, c: { range: (u, min, max) => [0, max * 1.15 || 1] } },
      },
      [days, summary.daily.map((d) => d.prompt_tokens), summary.daily.map((d) => d.completion_tokens), summary.daily.map((d) => d.credits_used)],
      chart,
    );
  } else chart.append(h("p", {}, "No requests yet."));
  await page();
}

// ---- admin ---------------------------------------------------------------------------------

async function adminPage() {
  const [{ data: users }, { data: groups }, { data: invites }] = await Promise.all([
    api("GET", "/api/admin/users"),
    api("GET", "/api/admin/groups"),
    api("GET", "/api/admin/invites"),
  ]);
  async function grant(u) {
    const credits = Number(prompt(`Credits to add for ${u.email} (negative removes)`, "100000"));
    if (!credits) return;
    try {
      await api("POST", `/api/admin/users/${u.id}/grant`, { credits });
      toast("Granted");
      route();
    } catch (error) {
      fail(error);
    }
  }
  async function toggle(u) {
    try {
      await api("POST", `/api/admin/users/${u.id}/disable`, { disabled: !u.disabled });
      route();
    } catch (error) {
      fail(error);
    }
  }
  show(
    h("h1", {}, "Admin"),
    adminTabs("admin"),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Users"),
      h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ...["Email", "Credits", "Group", "Role", "State", ""].map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, ...users.map((u) => h("tr", {}, h("td", {}, u.email), h("td", {}, fmt(u.credits)), h("td", {}, groupSelect(u, groups, route)), h("td", {}, u.is_admin ? "admin" : "user"), h("td", {}, u.disabled ? "disabled" : "active"), h("td", { class: "actions" }, h("button", { class: "secondary small", onclick: () => grant(u) }, "Grant"), h("button", { class: u.disabled ? "small" : "danger small", onclick: () => toggle(u) }, u.disabled ? "Enable" : "Disable"))))))),
    ),
    invitesSection(invites),
  );
}

// Invite codes, for a server whose sign-up needs one: made here (shown once), listed, withdrawn.
function invitesSection(invites) {
  const uses = h("input", { type: "number", min: 1, value: 1 });
  const days = h("input", { type: "number", min: 1, value: 30 });
  const note = h("input", { type: "text", maxlength: 200 });
  const reveal = h("div", { class: "reveal", hidden: true });
  async function create(e) {
    e.preventDefault();
    try {
      const made = await api("POST", "/api/admin/invites", { uses: Number(uses.value), days: Number(days.value), note: note.value });
      reveal.replaceChildren(
        h("strong", {}, "The new invite code. It is shown only this once:"),
        h("code", { class: "secret", "data-testid": "new-invite" }, made.code),
        h("button", { onclick: () => copy(made.code, "Invite code copied") }, "Copy"),
      );
      reveal.hidden = false;
      rows.prepend(row(made));
    } catch (error) {
      fail(error);
    }
  }
  async function withdraw(invite, tr) {
    try {
      tr.replaceWith(row(await api("DELETE", `/api/admin/invites/${invite.id}`)));
    } catch (error) {
      fail(error);
    }
  }
  function row(invite) {
    const live = !invite.revoked_at && invite.uses < invite.max_uses && !(invite.expires_at && new Date(invite.expires_at) < new Date());
    const tr = h("tr", {}, h("td", {}, h("code", {}, `${invite.prefix}…`)), h("td", {}, invite.note), h("td", {}, `${fmt(invite.uses)} of ${fmt(invite.max_uses)}`), h("td", {}, when(invite.expires_at)), h("td", {}, invite.revoked_at ? "withdrawn" : live ? "live" : "spent"));
    tr.append(h("td", { class: "actions" }, live && h("button", { class: "danger small", onclick: () => withdraw(invite, tr) }, "Withdraw")));
    return tr;
  }
  const rows = h("tbody", {}, ...invites.map(row));
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Invite codes"),
    h("form", { class: "row wrap", onsubmit: create }, field("Sign-ups", uses), field("Days valid", days), field("Note", note), h("button", { type: "submit" }, "Create invite code")),
    reveal,
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ...["Code", "Note", "Used", "Expires", "State", ""].map((c) => h("th", { scope: "col" }, c)))), rows)),
  );
}

// ---- account -------------------------------------------------------------------------------

// Signing out forgets the secrets this browser acquired: "shown only this once" holds on a shared machine.
async function signOut() {
  keys.clear();
  await api("POST", "/api/logout").catch(fail);
  await loadMe();
  location.hash = "#/login";
}

function limitsText({ rpm, tpm, concurrency, tokens }) {
  const each = (n, what) => (n === null ? `no limit on ${what}` : `${fmt(n)} ${what}`);
  return `Your limits, across all your tokens: ${each(rpm, "requests a minute")}, ${each(tpm, "tokens a minute")}, ${each(concurrency, "requests at once")}, ${fmt(tokens)} live tokens.`;
}

function accountPage() {
  const current = h("input", { type: "password", autocomplete: "current-password" });
  const next = h("input", { type: "password", autocomplete: "new-password", minlength: 8 });
  show(
    h("h1", {}, "Account"),
    h("p", {}, `Signed in as ${session.user.email}.`),
    session.limits && h("p", { "data-testid": "limits" }, limitsText(session.limits)),
    h(
      "form",
      {
        class: "card narrow",
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await api("POST", "/api/me/password", { current_password: current.value, new_password: next.value });
            toast("Password changed");
          } catch (error) {
            fail(error);
          }
        },
      },
      h("h2", {}, "Change password"),
      field("Current password", current),
      field("New password", next, "At least 8 characters."),
      h("button", { type: "submit" }, "Change password"),
    ),
    h("button", { class: "secondary", onclick: signOut }, "Sign out"),
    deletionCard(async () => {
      await loadMe();
      location.hash = "#/login";
    }),
  );
}

// ---- router --------------------------------------------------------------------------------

const pages = {
  tokens: tokensPage,
  playground: playgroundPage,
  usage: usagePage,
  admin: adminPage,
  "admin/deployments": () => deploymentsPage(show),
  "admin/codes": () => codesPage(show),
  "admin/groups": () => groupsPage(show),
  "admin/requests": () => requestsPage(show),
  pricing: () => pricingPage(show),
  "admin/audit": () => auditPage(show),
  account: accountPage,
};

// One navigation at a time: a page still loading when the address changes finishes first, so it
// can't paint over the page asked for after it.
let routing = Promise.resolve();
function route() {
  routing = routing.then(navigate, navigate);
  return routing;
}

async function navigate() {
  const [name = "", query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const page = name || "tokens";
  const params = new URLSearchParams(query);
  // Reached without a session: from the sign-in page, or from a link in an email.
  const open = { login: () => loginPage().catch(fail), forgot: () => forgotPage(show), verify: () => verifyPage(show, params), reset: () => resetPage(show, params) };
  if (open[page]) return open[page]();
  if (!session.user) return (location.hash = "#/login");
  const section = page.split("/")[0];
  for (const link of document.querySelectorAll("#nav a")) link.setAttribute("aria-current", link.hash === `#/${section}` ? "page" : "false");
  try {
    await (pages[page] || tokensPage)(params);
  } catch (error) {
    if (error.status === 401) {
      await loadMe();
      location.hash = "#/login";
    } else fail(error);
  }
}

window.addEventListener("hashchange", route);
loadMe().then(route);
