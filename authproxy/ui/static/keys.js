// The API Keys page: create, list and revoke a space's keys through the admin API.
//
// Safe by construction: every text that comes from data (names, prefixes, messages) is
// set with textContent, never parsed as markup (the page's CSP enforces it with Trusted
// Types). The admin token arrives in the fragment (#token=...), which browsers never send
// to a server, is kept in sessionStorage only, and is removed from the address bar. A new
// key lives only in the page until it is reloaded: never in any storage.
"use strict";

(function () {
  const TOKEN_STORAGE = "authproxy.admin_token";
  const UNUSED_HINT_DAYS = 30; // the review threshold of README "The weekly review"
  const DAY_MS = 86400000;

  const SENTENCES = {
    noToken: "You are not signed in here: open API Keys from your space's Settings in the dashboard.",
    expired: "Your sign-in has expired: open API Keys again from your space's Settings in the dashboard.",
    invalid: "Your sign-in could not be verified: open API Keys again from your space's Settings in the dashboard.",
    forbidden: "Only owners and admins of this space can create and revoke its API keys.",
    badAddress: "This address does not name a space: open API Keys from your space's Settings in the dashboard.",
  };
  // Readable words for the admin API's error codes; others show the API's own message.
  const MESSAGES = {
    invalid_name: "Enter a name of 1 to 100 printable characters.",
    invalid_space_id: "This address does not name a valid space.",
    key_store_unavailable: "The key store is unavailable right now. Nothing was changed; try again in a moment.",
    overloaded: "authproxy is busy right now. Nothing was changed; try again in a moment.",
    body_too_large: "That name is too long.",
    not_found: "This key no longer exists in this space. Reload the page to see the current keys.",
    network: "authproxy could not be reached. Check your connection and try again.",
  };
  const EMPTY_NAME = "Enter a name for the key.";
  const COPIED = "Copied to the clipboard.";
  const COPY_FAILED = "Copying did not work here: select the key and copy it with Ctrl+C (⌘C on a Mac).";

  const $ = (id) => document.getElementById(id);
  const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // -- the token: from the fragment into sessionStorage, and out of the address bar

  function takeTokenFromFragment() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const token = fragment.get("token");
    if (location.hash) {
      // replaceState: the entry with the token is replaced, so Back never brings it back.
      history.replaceState(history.state, "", location.pathname + location.search);
    }
    if (token) {
      sessionStorage.setItem(TOKEN_STORAGE, token);
    }
  }

  function tokenClaims(token) {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload));
    } catch (error) {
      return {};
    }
  }

  // Only to choose the words: the admin API is what decides.
  function hasExpired(token) {
    const exp = tokenClaims(token).exp;
    return typeof exp === "number" && exp * 1000 <= Date.now();
  }

  // -- where we are: /<prefix>/ui/spaces/<space>/keys -> /<prefix>/v1/spaces/<space>/keys

  function keysUrl() {
    const match = /^(.*)\/ui\/spaces\/([^/]+)\/keys$/.exec(location.pathname);
    return match ? `${match[1]}/v1/spaces/${match[2]}/keys` : null;
  }

  async function api(method, url, body) {
    const token = sessionStorage.getItem(TOKEN_STORAGE) || "";
    const init = {
      method,
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new ApiError(0, "network", MESSAGES.network);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      const detail = (data && data.error) || {};
      throw new ApiError(response.status, detail.code || "", detail.message || "");
    }
    return data;
  }

  function describe(error) {
    if (!(error instanceof ApiError)) {
      return "Something went wrong on this page. Reload it and try again.";
    }
    return MESSAGES[error.code] || error.message || `The request failed (HTTP ${error.status}).`;
  }

  // -- page states

  function announce(text) {
    const region = $("announcer");
    region.textContent = "";
    // A fresh text node after a tick, so the same words said twice are announced twice.
    setTimeout(() => {
      region.textContent = text;
    }, 50);
  }

  function showSentence(text) {
    $("loading").hidden = true;
    $("manage").hidden = true;
    $("new-key-value").value = "";
    const dialog = $("revoke-dialog");
    if (dialog.open) {
      dialog.close();
    }
    const notice = $("notice");
    notice.textContent = text;
    notice.hidden = false;
  }

  // 401 and 403 end the managing: the sentence says why. Other errors stay by the control.
  function handleAccessError(error) {
    if (!(error instanceof ApiError)) {
      return false;
    }
    if (error.status === 401) {
      const token = sessionStorage.getItem(TOKEN_STORAGE) || "";
      showSentence(hasExpired(token) ? SENTENCES.expired : SENTENCES.invalid);
      return true;
    }
    if (error.status === 403) {
      showSentence(SENTENCES.forbidden);
      return true;
    }
    return false;
  }

  function setError(element, text, field) {
    element.textContent = text;
    element.hidden = !text;
    if (field) {
      if (text) {
        field.setAttribute("aria-invalid", "true");
      } else {
        field.removeAttribute("aria-invalid");
      }
    }
  }

  // -- the table

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) {
      node.textContent = text;
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function utcText(date) {
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function timeNode(iso) {
    const date = new Date(iso);
    const node = el("time", localTime.format(date));
    node.dateTime = iso;
    node.title = utcText(date);
    return node;
  }

  function daysSince(iso) {
    return Math.floor((Date.now() - Date.parse(iso)) / DAY_MS);
  }

  function plural(count, word) {
    return `${count} ${word}${count === 1 ? "" : "s"}`;
  }

  function cell(label) {
    const node = el("td");
    node.setAttribute("role", "cell");
    node.dataset.label = label;
    return node;
  }

  function lastUsedCell(key) {
    const node = cell("Last used");
    if (key.last_used_at) {
      node.append(timeNode(key.last_used_at));
    } else {
      node.append(el("span", "never used"));
    }
    // The seed's advice: monitor last used dates. Unused like README's review: the last
    // use, or the creation when never used, longer ago than the threshold.
    const idle = daysSince(key.last_used_at || key.created_at);
    if (key.status === "active" && idle >= UNUSED_HINT_DAYS) {
      node.append(el("span", `unused for ${plural(idle, "day")}`, "hint"));
    }
    return node;
  }

  function expiryHint(key) {
    const days = Math.ceil((Date.parse(key.expires_at) - Date.now()) / DAY_MS);
    const hint = el("span", days <= 1 ? "expires within a day" : `expires in ${plural(days, "day")}`, "hint");
    hint.title = utcText(new Date(key.expires_at));
    return hint;
  }

  function statusCell(key, nameCell) {
    const node = cell("Status");
    if (key.status === "revoked") {
      const word = el("span", "Revoked", "status status-revoked");
      if (key.revoked_at) {
        word.title = utcText(new Date(key.revoked_at));
      }
      node.append(word);
      return node;
    }
    if (key.status === "expired") {
      node.append(el("span", "Expired", "status status-expired"));
      return node;
    }
    node.append(el("span", "Active", "status status-active"));
    if (key.expires_at) {
      node.append(expiryHint(key));
    }
    const revoke = el("button", "Revoke", "danger small");
    revoke.type = "button";
    revoke.setAttribute("aria-describedby", nameCell.id);
    revoke.addEventListener("click", () => askToRevoke(key, revoke));
    node.append(revoke);
    return node;
  }

  function keyRow(key) {
    const row = el("tr");
    row.setAttribute("role", "row");
    row.dataset.keyId = key.id;
    const name = cell("Name");
    name.id = `key-name-${key.id}`;
    name.textContent = key.name;
    const prefix = cell("Prefix");
    prefix.append(el("code", key.prefix));
    const created = cell("Created");
    created.append(timeNode(key.created_at));
    row.append(name, prefix, created, lastUsedCell(key), statusCell(key, name));
    return row;
  }

  function showKeys(keys) {
    const sorted = [...keys].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
    $("key-rows").replaceChildren(...sorted.map(keyRow));
    $("no-keys").hidden = sorted.length > 0;
  }

  function replaceRow(key) {
    const old = document.querySelector(`tr[data-key-id="${CSS.escape(key.id)}"]`);
    const row = keyRow(key);
    if (old) {
      old.replaceWith(row);
    } else {
      $("key-rows").prepend(row);
    }
    $("no-keys").hidden = true;
    return row;
  }

  // -- create

  async function createKey(event) {
    event.preventDefault();
    const input = $("key-name");
    const error = $("name-error");
    const name = input.value.trim();
    if (!name) {
      setError(error, EMPTY_NAME, input);
      input.focus();
      return;
    }
    setError(error, "", input);
    const button = $("create-key");
    button.disabled = true;
    try {
      const key = await api("POST", state.keysUrl, { name });
      showNewKey(key);
      replaceRow(key);
      input.value = "";
    } catch (failure) {
      if (!handleAccessError(failure)) {
        setError(error, describe(failure), input);
        input.focus();
      }
    } finally {
      button.disabled = false;
    }
  }

  function showNewKey(key) {
    const box = $("new-key-value");
    box.value = key.key; // only here: never in storage, gone with a reload
    $("copy-status").textContent = "";
    $("new-key").hidden = false;
    box.focus();
    box.select();
    announce(`Key ${key.name} created. Copy this key now — it won't be shown again.`);
  }

  async function copyKey() {
    const box = $("new-key-value");
    const status = $("copy-status");
    try {
      await navigator.clipboard.writeText(box.value);
      status.textContent = COPIED;
    } catch (error) {
      box.focus();
      box.select();
      status.textContent = COPY_FAILED;
    }
  }

  // -- revoke, after a confirmation

  function askToRevoke(key, button) {
    const dialog = $("revoke-dialog");
    state.revoking = { key, button };
    $("revoke-text").textContent =
      `“${key.name}” (${key.prefix}) stops working at once, for every application using it. ` +
      "Revoked keys cannot be restored.";
    setError($("revoke-error"), "");
    dialog.showModal();
    $("revoke-cancel").focus(); // the safe choice is the default
  }

  function closeRevokeDialog() {
    const dialog = $("revoke-dialog");
    const pending = state.revoking;
    state.revoking = null;
    if (dialog.open) {
      dialog.close();
    }
    if (pending && pending.button.isConnected) {
      pending.button.focus();
    }
  }

  async function confirmRevoke() {
    const pending = state.revoking;
    if (!pending) {
      return;
    }
    const confirm = $("revoke-confirm");
    confirm.disabled = true;
    try {
      const key = await api("POST", `${state.keysUrl}/${encodeURIComponent(pending.key.id)}/revoke`);
      state.revoking = null;
      $("revoke-dialog").close();
      const row = replaceRow(key);
      const status = row.lastElementChild;
      status.tabIndex = -1;
      status.focus();
      announce(`Key ${key.name} revoked.`);
    } catch (failure) {
      if (!handleAccessError(failure)) {
        setError($("revoke-error"), describe(failure));
      }
    } finally {
      confirm.disabled = false;
    }
  }

  // -- start

  const state = { keysUrl: null, revoking: null };

  async function load() {
    takeTokenFromFragment();
    state.keysUrl = keysUrl();
    const token = sessionStorage.getItem(TOKEN_STORAGE);
    if (!state.keysUrl) {
      showSentence(SENTENCES.badAddress);
      return;
    }
    if (!token) {
      showSentence(SENTENCES.noToken);
      return;
    }
    if (hasExpired(token)) {
      showSentence(SENTENCES.expired);
      return;
    }
    let listed;
    try {
      listed = await api("GET", state.keysUrl);
    } catch (failure) {
      if (!handleAccessError(failure)) {
        showSentence(describe(failure));
      }
      return;
    }
    showKeys(listed.keys);
    $("loading").hidden = true;
    $("notice").hidden = true;
    $("manage").hidden = false;
  }

  function start() {
    $("create-form").addEventListener("submit", createKey);
    $("copy-key").addEventListener("click", copyKey);
    $("revoke-confirm").addEventListener("click", confirmRevoke);
    $("revoke-cancel").addEventListener("click", closeRevokeDialog);
    $("revoke-dialog").addEventListener("cancel", (event) => {
      event.preventDefault(); // Escape: closed our way, focus back on its Revoke button
      closeRevokeDialog();
    });
    // The dashboard may hand over a fresh token later (an embedded page's new fragment).
    window.addEventListener("hashchange", load);
    load();
  }

  start();
})();
