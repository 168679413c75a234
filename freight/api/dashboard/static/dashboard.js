// freight's dashboard: keeps a server-rendered page up to date by polling its JSON twin
// (/dashboard/api/...), and sends Cancel with the page's CSRF token. Every value is set with
// textContent (never innerHTML), so custom_ids and error messages stay text.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const pollMs = Number(body.dataset.pollMs) || 1000;
  const csrf = (document.querySelector('meta[name="freight-csrf"]') || {}).content || "";

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function cells(row, values) {
    for (const v of values) {
      const td = document.createElement("td");
      if (v instanceof Node) td.appendChild(v); else td.textContent = String(v);
      row.appendChild(td);
    }
    return row;
  }

  function progress(value) {
    const p = document.createElement("progress");
    p.max = 1;
    p.value = value;
    return p;
  }

  function statusBadge(b) {
    const span = el("span", b.status, "status status-" + b.status);
    const wrap = document.createElement("span");
    wrap.appendChild(span);
    wrap.appendChild(document.createTextNode(" "));
    wrap.appendChild(el("span", b.paused_text, "paused"));
    return wrap;
  }

  function renderModels(models, emptyText) {
    const tbody = document.querySelector("#models tbody");
    if (!tbody) return;
    const rows = models.map((m) => cells(document.createElement("tr"),
      [m.model, m.batches, m.rate_text, m.queued, m.running]));
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = el("td", emptyText);
      td.colSpan = 5;
      tr.appendChild(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  async function getJSON(url) {
    const r = await fetch(url, {credentials: "same-origin", headers: {"accept": "application/json"}});
    if (r.status === 401) { window.location.assign("/dashboard/login"); throw new Error("signed out"); }
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }

  // ---- the index --------------------------------------------------------------------------------
  function renderIndex(data) {
    const tbody = document.querySelector("#batches tbody");
    const rows = data.batches.map((b) => {
      const tr = document.createElement("tr");
      tr.dataset.batchId = b.id;
      const link = el("a", b.api_id);
      link.href = b.url;
      const idCell = document.createElement("span");
      idCell.appendChild(link);
      idCell.appendChild(document.createTextNode(" "));
      idCell.appendChild(el("span", b.api, "api"));
      return cells(tr, [idCell, statusBadge(b), progress(b.progress), b.counts_text, b.eta_text, b.cost_text,
                        b.model, b.created]);
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = el("td", "No batches yet.");
      td.colSpan = 8;
      tr.appendChild(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    renderModels(data.models, "No batch is running.");
  }

  // ---- one batch --------------------------------------------------------------------------------
  function renderBatch(data) {
    const b = data.batch;
    for (const node of document.querySelectorAll("[data-field]")) {
      const v = b[node.dataset.field];
      node.textContent = v === null || v === undefined ? "" : String(v);
    }
    const status = document.getElementById("status");
    status.className = "status status-" + b.status;
    document.getElementById("progress").value = b.progress;
    document.getElementById("cancel").hidden = !b.cancellable;
    const links = data.links.map((l) => {
      const li = document.createElement("li");
      const a = el("a", l.label);
      a.href = l.url;
      a.dataset.link = l.name;
      li.appendChild(a);
      return li;
    });
    document.getElementById("links").replaceChildren(...links);
    renderModels(data.models, "No batch of this model is running.");
    const groups = data.failures.groups.map((g) => {
      const div = el("div", null, "failure-group");
      div.dataset.code = g.code;
      const h = document.createElement("h3");
      h.appendChild(el("code", g.code));
      h.appendChild(document.createTextNode(" × " + g.count));
      div.appendChild(h);
      const ul = document.createElement("ul");
      for (const e of g.examples) {
        const li = document.createElement("li");
        li.appendChild(el("code", e.custom_id, "custom-id"));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("span", e.message, "message"));
        ul.appendChild(li);
      }
      div.appendChild(ul);
      return div;
    });
    if (!groups.length) groups.push(el("p", "No failures.", "empty"));
    document.getElementById("failures").replaceChildren(...groups);
    body.dataset.status = b.status;
    body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
  }

  function poll(url, render, everyMs, stopWhen) {
    let stopped = false;
    async function tick() {
      try {
        const data = await getJSON(url);
        render(data);
        if (stopWhen && stopWhen(data)) stopped = true;
      } catch (err) {
        body.dataset.pollError = String(err);
      }
      if (!stopped) window.setTimeout(tick, everyMs);
    }
    window.setTimeout(tick, everyMs);
  }

  async function cancel(batchId) {
    const out = document.getElementById("cancel-error");
    out.textContent = "";
    if (!window.confirm("Cancel this batch? Requests already running finish; the rest are not run.")) return;
    const r = await fetch("/dashboard/api/batches/" + encodeURIComponent(batchId) + "/cancel", {
      method: "POST", credentials: "same-origin", headers: {"x-freight-csrf": csrf, "accept": "application/json"},
    });
    const data = await r.json();
    if (!r.ok) { out.textContent = (data.error && data.error.message) || ("HTTP " + r.status); return; }
    renderBatch(data);
  }

  const logout = document.getElementById("logout");
  if (logout) {
    const field = document.createElement("input");
    field.type = "hidden";
    field.name = "csrf";
    field.value = csrf;
    logout.appendChild(field);
  }

  if (page === "index") {
    poll("/dashboard/api/batches", renderIndex, 2 * pollMs, null);
  } else if (page === "batch") {
    const id = body.dataset.batchId;
    document.getElementById("cancel").addEventListener("click", () => { cancel(id); });
    const terminal = (d) => d.batch.terminal && d.batch.status !== "cancelling";
    poll("/dashboard/api/batches/" + encodeURIComponent(id), renderBatch, pollMs, terminal);
  }
})();
