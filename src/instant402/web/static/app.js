// instant402 pages: small progressive enhancements, no build step, no outside requests.
"use strict";

function $(sel, root) { return (root || document).querySelector(sel); }
function $$(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }

async function api(method, url, body, csrf) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(url, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  return { status: response.status, data };
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Money as the server shows it: dollars with cents; below a cent, two significant digits ($0.00027).
function money(value) {
  if (value === null || value === undefined || value === "") return "–";
  const n = Number(value);
  if (!isFinite(n)) return String(value);
  const a = Math.abs(n);
  let text;
  if (a === 0 || a >= 0.01) {
    text = a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  } else {
    const places = 1 - Math.floor(Math.log10(a));
    text = Number(a.toPrecision(2)).toFixed(places).replace(/(\.\d\d\d*?)0+$/, "$1");
  }
  return (n < 0 ? "-$" : "$") + text;
}

// Confirmation before destructive forms; copy buttons.
document.addEventListener("submit", (event) => {
  const msg = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) event.preventDefault();
});
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  navigator.clipboard && navigator.clipboard.writeText(button.getAttribute("data-copy"));
  button.textContent = "Copied";
});

// ---- resource editor -------------------------------------------------------------------------------------------

const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}/g;

function placeholders(text) {
  const found = [];
  const cleaned = text.split("{{{{").join("");  // a literal {{ is not a placeholder
  for (const m of cleaned.matchAll(PLACEHOLDER)) if (!found.includes(m[1])) found.push(m[1]);
  return found;
}

function setupEditor(form) {
  const rows = $("[data-param-rows]", form);
  const template = $("[data-param-template]", form);
  let next = $$(".param-row", rows).length;

  function showForType(row) {
    const type = $("[data-param-type]", row).value;
    $$("[data-for-types]", row).forEach((f) => { f.hidden = !f.getAttribute("data-for-types").split(" ").includes(type); });
  }
  function addRow(name) {
    const html = template.innerHTML.split("__i__").join(String(next++));
    const wrap = document.createElement("div");
    wrap.innerHTML = html.trim();
    const row = wrap.firstElementChild;
    if (name) $("[data-param-name]", row).value = name;
    rows.appendChild(row);
    showForType(row);
    detect();
    estimateSoon();
    return row;
  }
  function detect() {
    const names = $$("[data-template]", form).flatMap((t) => placeholders(t.value));
    const declared = $$("[data-param-name]", rows).map((i) => i.value.trim());
    const missing = names.filter((n) => !declared.includes(n));
    const box = $("[data-detected]", form);
    const list = $("[data-detected-list]", form);
    list.innerHTML = "";
    missing.forEach((name) => {
      const b = el("button", { type: "button", class: "small", "data-propose": name }, "Add “" + name + "”");
      b.addEventListener("click", () => addRow(name));
      list.appendChild(b);
      list.appendChild(document.createTextNode(" "));
    });
    box.hidden = missing.length === 0;
    // The reverse: a parameter neither template uses is flagged on its row.
    $$(".param-row", rows).forEach((row) => {
      const name = $("[data-param-name]", row).value.trim();
      const note = $("[data-unused-note]", row);
      if (!note) return;
      note.hidden = !name || names.includes(name);
      $("[data-unused-name]", note).textContent = name;
    });
  }
  $$(".param-row", rows).forEach(showForType);
  $("[data-add-param]", form).addEventListener("click", () => addRow(""));
  rows.addEventListener("click", (e) => {
    if (e.target.matches("[data-remove-param]")) { e.target.closest(".param-row").remove(); detect(); estimateSoon(); }
  });
  rows.addEventListener("change", (e) => { if (e.target.matches("[data-param-type]")) showForType(e.target.closest(".param-row")); });
  form.addEventListener("input", (e) => {
    if (e.target.matches("[data-template], [data-param-name]")) detect();
    // A default is what makes a parameter optional: typing one unticks "Required" (as the server does).
    if (e.target.matches("[name$='-default']") && e.target.value.trim()) {
      const required = $("[data-param-required]", e.target.closest(".param-row"));
      if (required) required.checked = false;
    }
    estimateSoon();
  });
  form.addEventListener("change", estimateSoon);

  const kind = $("[data-output-kind]", form);
  function showOutput() { $$("[data-for-output]", form).forEach((b) => { b.hidden = b.getAttribute("data-for-output") !== kind.value; }); }
  kind.addEventListener("change", showOutput);
  showOutput();
  detect();

  // Live cost and margin: the preview API renders nothing upstream, it only estimates.
  let timer = null;
  function estimateSoon() { clearTimeout(timer); timer = setTimeout(estimate, 400); }
  function num(v) { return v.trim() === "" ? null : Number(v); }
  function definition() {
    const f = (n) => (form.elements[n] ? form.elements[n].value : "");
    const split = (s) => s.split(/[,\n]/).map((x) => x.trim()).filter(Boolean);
    const params = $$(".param-row", rows).map((row) => {
      const g = (n) => $("[name$='-" + n + "']", row);
      const type = g("type").value;
      const p = { name: g("name").value.trim(), type, description: g("description").value.trim(), required: g("required").checked };
      const d = g("default").value.trim();
      if (d !== "") p.default = type === "integer" || type === "number" ? Number(d) : type === "boolean" ? d === "true" : d;
      if (type === "enum") p.enum = split(g("enum").value);
      if (type === "integer" || type === "number") { ["min", "max"].forEach((b) => { const x = num(g(b).value); if (x !== null) p[b] = x; }); }
      if (type === "string" && g("max_length").value.trim()) p.max_length = Number(g("max_length").value);
      return p;
    }).filter((p) => p.name);
    const def = {
      name: f("name").trim() || "Untitled", description: f("description"), model_id: f("model_id").trim(),
      fallback_model_ids: split(f("fallback_model_ids")), system_prompt: f("system_prompt"), prompt_template: f("prompt_template"),
      parameters: params, output_kind: f("output_kind"), price_atomic: Math.round(Number(f("price")) * 1e6),
      max_tokens: parseInt(f("max_tokens") || "0", 10),
    };
    if (f("slug").trim()) def.slug = f("slug").trim();
    if (num(f("temperature")) !== null) def.temperature = num(f("temperature"));
    if (num(f("top_p")) !== null) def.top_p = num(f("top_p"));
    if (def.output_kind === "json" && f("output_schema").trim()) { try { def.output_schema = JSON.parse(f("output_schema")); } catch (e) { /* the server says why on save */ } }
    return def;
  }
  async function estimate() {
    const box = $("[data-estimate]", form);
    const def = definition();
    if (!def.model_id || !def.prompt_template) return;
    const { status, data } = await api("POST", "/api/v1/me/resources/preview", { resource: def }, form.dataset.csrf);
    box.innerHTML = "";
    if (status === 200) {
      const e = data.estimate;
      box.appendChild(el("p", {}, "Upstream cost: typical " + money(e.typical_cost) + ", worst " + money(e.worst_case_cost)));
      box.appendChild(el("p", { "data-testid": "live-margin" }, "Margin: typical " + money(e.margin_typical) + ", worst " + money(e.margin_worst_case)));
      e.warnings.concat((data.warnings || []).map((w) => w.message)).forEach((w) => box.appendChild(el("p", { class: "alert" }, w)));
    } else if (data && data.error) {
      box.appendChild(el("p", { class: "muted" }, "No estimate yet:"));
      const fields = data.error.details && data.error.details.fields;
      Object.entries(fields || { form: data.error.message }).slice(0, 5).forEach(([k, m]) =>
        box.appendChild(el("p", { class: "error" }, k.replace(/^resource\./, "") + ": " + m)));
    }
  }
  estimate();

  // Model picker: search the catalog API, fill the model id.
  const q = $("[data-picker-q]", form);
  const results = $("[data-picker-results]", form);
  let pickTimer = null;
  q.addEventListener("input", () => { clearTimeout(pickTimer); pickTimer = setTimeout(search, 250); });
  q.addEventListener("keydown", (e) => { if (e.key === "Enter") e.preventDefault(); });
  async function search() {
    results.innerHTML = "";
    if (!q.value.trim()) return;
    const { status, data } = await api("GET", "/api/v1/models?chat=true&per_page=8&q=" + encodeURIComponent(q.value.trim()));
    if (status !== 200) return;
    data.data.forEach((m) => {
      const li = el("li");
      const b = el("button", { type: "button", class: "small", "data-pick": m.id }, "Use");
      b.addEventListener("click", () => { form.elements.model_id.value = m.id; results.innerHTML = ""; q.value = ""; estimateSoon(); });
      li.appendChild(b);
      li.appendChild(document.createTextNode(" " + m.name + " — $" + (m.pricing.prompt_per_million || "?") + " / $" +
        (m.pricing.completion_per_million || "?") + " per 1M"));
      results.appendChild(li);
    });
  }
}

// ---- owner's test run ------------------------------------------------------------------------------------------

function renderOutput(box, out) {
  if (out.type === "text") box.appendChild(el("pre", { class: "output", "data-testid": "output" }, out.text));
  else if (out.type === "json") box.appendChild(el("pre", { class: "output", "data-testid": "output" }, JSON.stringify(out.data, null, 2)));
  else if (out.type === "image") {
    const wrap = el("div", { class: "images", "data-testid": "output" });
    (out.images || []).forEach((img, i) => wrap.appendChild(el("img", { src: img.url, alt: "Generated image " + (i + 1) })));
    box.appendChild(wrap);
    if (out.text) box.appendChild(el("p", {}, out.text));
  } else box.appendChild(el("pre", { class: "output" }, JSON.stringify(out, null, 2)));
}

function setupTestRun(form) {
  const box = $("#test-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    $$("[data-param]", form).forEach((f) => {
      const name = f.dataset.param, type = f.dataset.type, input = form.elements[name];
      if (type === "boolean") { body[name] = input.checked; return; }
      if (input.value === "") return;
      body[name] = type === "integer" || type === "number" ? Number(input.value) : input.value;
    });
    $$("[data-error-for]", form).forEach((p) => { p.hidden = true; });
    box.innerHTML = "";
    box.appendChild(el("p", { class: "muted" }, "Running…"));
    const button = $("button[type=submit]", form);
    button.disabled = true;
    const { status, data } = await api("POST", "/api/v1/me/resources/" + form.dataset.resource + "/test", body, form.dataset.csrf);
    button.disabled = false;
    box.innerHTML = "";
    if (status === 200 && data) {
      box.appendChild(el("h3", {}, "Output"));
      renderOutput(box, data.output);
      const b = data.breakdown || {};
      const dl = el("dl", { class: "facts", "data-testid": "breakdown" });
      [["Model", data.model], ["Tokens", (data.usage.prompt_tokens || 0) + " prompt + " + (data.usage.completion_tokens || 0) + " completion"],
       ["Price", money(b.price_usd)], ["Upstream cost", money(b.upstream_cost_usd)], ["Margin", money(b.margin_usd)]].forEach(([k, v]) => {
        dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v));
      });
      box.appendChild(dl);
    } else if (status === 404 && !(data && data.error && data.error.code !== "not_found")) {
      box.appendChild(el("p", { class: "error" }, "Test runs are not available on this server yet."));
    } else {
      const err = (data && data.error) || { message: "The test run failed (HTTP " + status + ")." };
      box.appendChild(el("p", { class: "error", role: "alert" }, err.message));
      Object.entries((err.details && err.details.fields) || {}).forEach(([k, m]) => {
        const p = $("[data-error-for='" + k + "']", form);
        if (p) { p.textContent = m; p.hidden = false; }
      });
    }
  });
}

// ---- compare models --------------------------------------------------------------------------------------------

function formValues(form) {
  const body = {};
  $$("[data-param]", form).forEach((f) => {
    const name = f.dataset.param, type = f.dataset.type, input = form.elements[name];
    if (type === "boolean") { body[name] = input.checked; return; }
    if (input.value === "") return;
    body[name] = type === "integer" || type === "number" ? Number(input.value) : input.value;
  });
  return body;
}

function setupCompare(form) {
  const grid = $("#compare-results");
  const problem = $("[data-compare-error]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const models = $$("input[name=model]", form).map((i) => i.value.trim()).filter((v) => v);
    $$("[data-error-for]", form).forEach((p) => { p.hidden = true; });
    problem.hidden = true;
    grid.innerHTML = "";
    models.forEach((m) => grid.appendChild(el("div", { class: "card compare-card" }, "Running " + m + "…")));
    const button = $("button[type=submit]", form);
    button.disabled = true;
    const { status, data } = await api("POST", "/api/v1/me/resources/" + form.dataset.resource + "/compare",
      { models, input: formValues(form) }, form.dataset.csrf);
    button.disabled = false;
    grid.innerHTML = "";
    if (status !== 200 || !data) {
      const err = (data && data.error) || { message: "The comparison failed (HTTP " + status + ")." };
      problem.textContent = err.message;
      problem.hidden = false;
      Object.entries((err.details && err.details.fields) || {}).forEach(([k, m]) => {
        const p = $("[data-error-for='" + k + "']", form);
        if (p) { p.textContent = m; p.hidden = false; }
      });
      return;
    }
    data.results.forEach((r) => {
      const card = el("div", { class: "card compare-card", "data-testid": "compare-card", "data-model": r.model });
      card.appendChild(el("h3", {}, r.name || r.model));
      card.appendChild(el("p", { class: "muted" }, r.model));
      if (r.error) {
        card.appendChild(el("p", { class: "error" }, r.error));
        if (r.detail) card.appendChild(el("p", { class: "muted" }, r.detail));
      } else {
        renderOutput(card, r.output);
      }
      const dl = el("dl", { class: "facts" });
      const rows = [["Latency", r.latency_ms === undefined ? "–" : r.latency_ms + " ms"]];
      if (r.tokens) rows.push(["Tokens", r.tokens.prompt_tokens + " in, " + r.tokens.completion_tokens + " out"]);
      rows.push(["Upstream cost", money(r.upstream_cost_usd)]);
      if (r.margin_usd !== undefined) rows.push(["Margin at " + money(r.price_usd), money(r.margin_usd)]);
      rows.forEach(([k, v]) => { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v)); });
      card.appendChild(dl);
      grid.appendChild(card);
    });
  });
}

// ---- public "try it": follow a long run's job until it is done ------------------------------------------------

function followJob(box) {
  const url = new URL(box.dataset.followJob, window.location.href);
  const path = url.pathname;  // same origin: the page only ever asks its own server
  const state = $("[data-job-state]", box);
  async function poll() {
    const { status, data } = await api("GET", path);
    if (status === 200 && data && data.state === "succeeded") {
      box.innerHTML = "";
      box.appendChild(el("h3", {}, "Answer"));
      renderOutput(box, data.output);
      if (data.receipt) {
        const dl = el("dl", { class: "facts", "data-testid": "receipt" });
        [["Transaction", data.receipt.transaction], ["Paid", money(Number(data.receipt.amount) / 1e6)]].forEach(([k, v]) => {
          dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v));
        });
        box.appendChild(dl);
      }
      return;
    }
    if (status === 200 && data && data.state === "failed") {
      box.innerHTML = "";
      box.appendChild(el("p", { class: "error" }, ((data.error && data.error.message) || "The job failed.").replace(" You were not charged.", "")));
      box.appendChild(el("p", { "data-testid": "not-charged" }, "You were not charged."));
      return;
    }
    if (status !== 200) { state.textContent = "Could not read the job (HTTP " + status + "); retrying…"; }
    else state.textContent = "Working… (" + data.state + "). You are charged only if it succeeds.";
    setTimeout(poll, 2000);
  }
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  $$("[data-follow-job]").forEach(followJob);
  const compare = $("#compare-form");
  if (compare) setupCompare(compare);
  const editor = $("#editor");
  if (editor) setupEditor(editor);
  const test = $("#test-form");
  if (test) setupTestRun(test);
});
