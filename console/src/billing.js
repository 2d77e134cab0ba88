// Paying for it: redeeming top-up codes, the pricing page, what a playground request costs; and the
// admin's codes and price groups.
import { adminTabs, pagerOf } from "./admin.js";
import { api } from "./api.js";
import { copy, field, fmt, h, toast, when } from "./dom.js";

function fail(error) {
  toast(error.message || String(error), "error");
}

const times = (m) => `×${Number(m).toLocaleString("en", { maximumFractionDigits: 3 })}`;

// ---- for every user ----------------------------------------------------------------------------

// The tokens page's box for a top-up code; `changed` reads the balance afresh.
export function redeemCard(changed) {
  const code = h("input", { class: "code-input", placeholder: "CG-XXXXX-XXXXX-XXXXX-XXXXX", maxlength: 100, autocomplete: "off", spellcheck: "false" });
  return h(
    "form",
    {
      class: "card row wrap",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const done = await api("POST", "/api/redeem", { code: code.value });
          code.value = "";
          toast(`${fmt(done.credits)} credits added`);
          await changed();
        } catch (error) {
          fail(error);
        }
      },
    },
    field("Top-up code", code),
    h("button", { type: "submit" }, "Redeem"),
  );
}

// Credits for a finished request at the user's prices, rounded up as the server charges.
export function costOf(price, usage) {
  if (!price || !usage) return null;
  const millionths = usage.prompt_tokens * price.list_prompt_per_million + usage.completion_tokens * price.list_completion_per_million;
  return Math.ceil((millionths * Math.round(price.multiplier * 1000)) / 1e9);
}

let pricing = null;
export async function pricesFor(model) {
  pricing = pricing || (await api("GET", "/api/pricing"));
  const found = pricing.data.find((p) => p.model === model);
  return found && { ...found, multiplier: pricing.multiplier };
}

// What the playground's request would cost at most (the credits it reserves), shown in `into`.
export async function estimateInto(into, body) {
  try {
    const { messages, model, max_tokens, temperature } = body;
    const estimate = await api("POST", "/api/pricing/estimate", { model, messages, max_tokens, temperature });
    into.textContent = `This request costs at most ${fmt(estimate.max_credits)} credits (${fmt(estimate.prompt_tokens)} prompt tokens at most + ${fmt(estimate.max_completion_tokens)} completion tokens at most, at your prices).`;
  } catch (error) {
    into.textContent = error.message;
  }
}

export async function pricingPage(show) {
  pricing = await api("GET", "/api/pricing");
  const per = (n) => (n === null || n === undefined ? "—" : fmt(n));
  show(
    h("h1", {}, "Pricing"),
    h(
      "p",
      { "data-testid": "pricing-group" },
      `Your group: ${pricing.group} (${times(pricing.multiplier)} the list prices). Prices are in credits; the playground shows what each request costs.`,
    ),
    h(
      "div",
      { class: "scroll card" },
      h(
        "table",
        { "data-testid": "pricing" },
        h("thead", {}, h("tr", {}, ...["Model", "Prompt, per million tokens", "Completion, per million tokens", "Per image"].map((c) => h("th", { scope: "col" }, c)))),
        h(
          "tbody",
          {},
          ...pricing.data.map((p) => h("tr", {}, h("td", {}, p.model), h("td", {}, per(p.prompt_per_million)), h("td", {}, per(p.completion_per_million)), h("td", {}, per(p.per_image)))),
        ),
      ),
    ),
  );
}

// ---- admin: codes ------------------------------------------------------------------------------

export async function codesPage(show) {
  const credits = h("input", { type: "number", min: 1, value: 100000, required: true });
  const count = h("input", { type: "number", min: 1, max: 10000, value: 10, required: true });
  const days = h("input", { type: "number", min: 1, max: 3650, placeholder: "never" });
  const note = h("input", { maxlength: 200, placeholder: "e.g. conference giveaway" });
  const reveal = h("div", { class: "reveal", hidden: true, "data-testid": "new-codes" });
  const state = h("select", { "aria-label": "Show" }, ...["", "unused", "used", "expired", "disabled"].map((s) => h("option", { value: s }, s || "All codes")));
  const body = h("tbody");
  const pager = h("p", { class: "pager" });
  const exportLink = h("a", { class: "button secondary", download: "", "data-testid": "codes-csv" }, "Export CSV");
  let offset = 0;
  const size = 50;

  async function create(e) {
    e.preventDefault();
    try {
      const made = await api("POST", "/api/admin/codes", {
        credits: Number(credits.value),
        count: Number(count.value),
        expires_in_days: days.value ? Number(days.value) : null,
        note: note.value || null,
      });
      const text = made.codes.join("\n");
      reveal.replaceChildren(
        h("strong", {}, `${made.codes.length} codes worth ${fmt(credits.value)} credits each. They are shown only this once:`),
        h("pre", { class: "codes" }, text),
        h("button", { type: "button", onclick: () => copy(text, "Codes copied") }, "Copy all"),
        h("a", { class: "button secondary", download: "codes.txt", href: URL.createObjectURL(new Blob([text + "\n"], { type: "text/plain" })) }, "Download"),
      );
      reveal.hidden = false;
      offset = 0;
      await page();
    } catch (error) {
      fail(error);
    }
  }

  async function disable(c) {
    if (!confirm(`Disable ${c.code}? It can no longer be redeemed.`)) return;
    try {
      await api("POST", `/api/admin/codes/${c.id}/disable`);
      toast("Code disabled");
      await page();
    } catch (error) {
      fail(error);
    }
  }

  async function page() {
    const query = new URLSearchParams();
    if (state.value) query.set("state", state.value);
    exportLink.href = `/api/admin/codes.csv?${query}`;
    query.set("limit", size);
    query.set("offset", offset);
    const { data, total } = await api("GET", `/api/admin/codes?${query}`);
    body.replaceChildren(
      ...data.map((c) =>
        h(
          "tr",
          { "data-code": c.id },
          h("td", {}, h("code", {}, c.code)),
          h("td", {}, fmt(c.credits)),
          h("td", {}, h("span", { class: c.state === "unused" ? "badge" : c.state === "used" ? "badge warn" : "badge off" }, c.state)),
          h("td", {}, c.note || ""),
          h("td", {}, when(c.created_at)),
          h("td", {}, when(c.expires_at)),
          h("td", {}, c.redeemed_by ? `${c.redeemed_by}, ${when(c.redeemed_at)}` : "—"),
          h("td", {}, c.state === "unused" && h("button", { class: "danger small", onclick: () => disable(c), "aria-label": `Disable code ${c.id}` }, "Disable")),
        ),
      ),
    );
    if (!data.length) body.append(h("tr", {}, h("td", { colspan: 8 }, "No codes.")));
    pager.replaceChildren(...pagerOf(offset, size, total, (next) => ((offset = next), page().catch(fail))));
  }
  state.addEventListener("change", () => ((offset = 0), page().catch(fail)));

  show(
    h("h1", {}, "Admin"),
    adminTabs("admin/codes"),
    h(
      "form",
      { class: "card row wrap", onsubmit: create },
      field("Credits each", credits),
      field("How many", count),
      field("Expires in (days)", days),
      field("Note", note),
      h("button", { type: "submit" }, "Create codes"),
    ),
    reveal,
    h(
      "section",
      { class: "card" },
      h("div", { class: "row wrap" }, h("h2", {}, "Top-up codes"), field("Show", state), exportLink),
      h("div", { class: "scroll" }, h("table", { "data-testid": "codes" }, h("thead", {}, h("tr", {}, ...["Code", "Credits", "State", "Note", "Created", "Expires", "Redeemed", ""].map((c) => h("th", { scope: "col" }, c)))), body)),
      pager,
    ),
  );
  await page();
}

// ---- admin: price groups -----------------------------------------------------------------------

const listOf = (text) => (text.trim() ? text.split(",").map((m) => m.trim()).filter(Boolean) : null);

export async function groupsPage(show) {
  const name = h("input", { maxlength: 64, required: true, placeholder: "e.g. free" });
  const multiplier = h("input", { type: "number", min: 0, max: 100, step: 0.001, value: 1, required: true });
  const models = h("input", { placeholder: "every model" });
  const description = h("input", { maxlength: 200 });
  const body = h("tbody");

  async function refresh() {
    const { data } = await api("GET", "/api/admin/groups");
    body.replaceChildren(
      ...data.map((g) =>
        h(
          "tr",
          { "data-group": g.name },
          h("td", {}, h("strong", {}, g.name), g.description ? h("div", {}, h("small", { class: "muted" }, g.description)) : null),
          h("td", {}, times(g.multiplier)),
          h("td", { class: "wrapcell" }, g.models ? g.models.join(", ") : "every model"),
          h("td", {}, fmt(g.members)),
          h("td", {}, h("button", { class: "secondary small", onclick: () => edit(g), "aria-label": `Edit ${g.name}` }, "Edit")),
        ),
      ),
    );
  }

  async function edit(g) {
    const m = prompt(`Price multiplier for ${g.name} (1 is the list price)`, String(g.multiplier));
    if (m === null) return;
    const list = prompt(`Models ${g.name} may use, comma-separated (empty: every model)`, (g.models || []).join(", "));
    if (list === null) return;
    const chosen = listOf(list);
    try {
      await api("PATCH", `/api/admin/groups/${encodeURIComponent(g.name)}`, { multiplier: Number(m), models: chosen, all_models: chosen === null });
      toast("Group changed");
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  async function create(e) {
    e.preventDefault();
    try {
      await api("POST", "/api/admin/groups", { name: name.value.trim(), multiplier: Number(multiplier.value), models: listOf(models.value), description: description.value || null });
      toast("Group created");
      name.value = "";
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  show(
    h("h1", {}, "Admin"),
    adminTabs("admin/groups"),
    h(
      "form",
      { class: "card row wrap", onsubmit: create },
      field("Group name", name),
      field("Price multiplier", multiplier),
      field("Models (comma-separated)", models),
      field("Description", description),
      h("button", { type: "submit" }, "Create group"),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Price groups"),
      h("p", { class: "muted" }, "Move a user on the Users tab. A multiplier applies from the user's next request."),
      h("div", { class: "scroll" }, h("table", { "data-testid": "groups" }, h("thead", {}, h("tr", {}, ...["Group", "Multiplier", "Models", "Members", ""].map((c) => h("th", { scope: "col" }, c)))), body)),
    ),
  );
  await refresh();
}

// The Users tab's group cell: a select that moves the user.
export function groupSelect(user, groups, moved) {
  const select = h("select", { "aria-label": `Group of ${user.email}` }, ...groups.map((g) => h("option", { value: g.name, selected: g.name === user.group }, g.name)));
  select.addEventListener("change", async () => {
    try {
      await api("POST", `/api/admin/users/${user.id}/group`, { group: select.value });
      toast(`${user.email} is now in ${select.value}`);
      await moved();
    } catch (error) {
      fail(error);
    }
  });
  return select;
}
