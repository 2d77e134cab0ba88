// Pages reached from an email, or on the way to one: confirm an address, forgot / reset a password,
// "check your email" after signing up; and deleting one's own account.
import { api, keys } from "./api.js";
import { field, fmt, h, toast } from "./dom.js";

function fail(error) {
  toast(error.message || String(error), "error");
}

export function checkEmailPage(show, email) {
  async function resend() {
    try {
      await api("POST", "/api/verify/resend", { email });
      toast("Sent again");
    } catch (error) {
      fail(error);
    }
  }
  show(
    h(
      "section",
      { class: "card narrow", "data-testid": "check-email" },
      h("h1", {}, "Check your email"),
      h("p", {}, `We sent a link to ${email}. Open it to confirm your address; your free credits are added then, and you can sign in.`),
      h("div", { class: "row" }, h("button", { class: "secondary", onclick: resend }, "Send it again"), h("a", { href: "#/login" }, "Back to sign in")),
    ),
  );
}

export async function verifyPage(show, query) {
  const box = h("section", { class: "card narrow", "data-testid": "verified" }, h("h1", {}, "Confirming your address…"));
  show(box);
  try {
    const done = await api("POST", "/api/verify", { token: query.get("token") || "" });
    box.replaceChildren(
      h("h1", {}, "Address confirmed"),
      h("p", {}, `${done.email} is confirmed, and your balance is ${fmt(done.credits)} credits.`),
      h("a", { class: "button", href: "#/login" }, "Sign in"),
    );
  } catch (error) {
    box.replaceChildren(h("h1", {}, "This link does not work"), h("p", {}, error.message), h("a", { href: "#/login" }, "Back to sign in"));
  }
}

export function forgotPage(show) {
  const email = h("input", { type: "email", autocomplete: "username", required: true });
  const note = h("p", { role: "status", "data-testid": "forgot-sent" });
  show(
    h(
      "form",
      {
        class: "card narrow",
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await api("POST", "/api/password/forgot", { email: email.value });
            note.textContent = "If that address has an account, a link to choose a new password is on its way. It works for an hour.";
          } catch (error) {
            fail(error);
          }
        },
      },
      h("h1", {}, "Forgot your password?"),
      field("Email", email),
      h("button", { type: "submit" }, "Email me a link"),
      note,
      h("a", { href: "#/login" }, "Back to sign in"),
    ),
  );
}

export function resetPage(show, query) {
  const password = h("input", { type: "password", autocomplete: "new-password", required: true, minlength: 8 });
  show(
    h(
      "form",
      {
        class: "card narrow",
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await api("POST", "/api/password/reset", { token: query.get("token") || "", new_password: password.value });
            toast("Password changed: sign in with it");
            location.hash = "#/login";
          } catch (error) {
            fail(error);
          }
        },
      },
      h("h1", {}, "Choose a new password"),
      field("New password", password, "At least 8 characters. Every signed-in session ends."),
      h("button", { type: "submit" }, "Set password"),
    ),
  );
}

// The account page's last card: deleting the account, confirmed with the password.
export function deletionCard(afterwards) {
  const password = h("input", { type: "password", autocomplete: "current-password" });
  return h(
    "form",
    {
      class: "card narrow danger-zone",
      onsubmit: async (e) => {
        e.preventDefault();
        if (!confirm("Delete your account? Your tokens stop working at once and this cannot be undone.")) return;
        try {
          await api("DELETE", "/api/me", { password: password.value });
          keys.clear();
          toast("Your account is deleted");
          await afterwards();
        } catch (error) {
          fail(error);
        }
      },
    },
    h("h2", {}, "Delete account"),
    h("p", {}, "Your tokens are revoked and your email and password are removed. The record of what was charged stays, anonymised, for the books."),
    field("Password", password),
    h("button", { type: "submit", class: "danger" }, "Delete my account"),
  );
}
