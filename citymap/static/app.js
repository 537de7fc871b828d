// CityStream city map: Leaflet (no tiles: the city's own GeoJSON) + uPlot, live by SSE.
"use strict";
(function () {
  const API = "/api/v1";
  const state = { token: null, me: null, layers: {}, intersections: new Map(), districts: null,
                  ready: false, events: [], selected: null };
  window.citymap = state; // for the browser tests

  // ---- token ------------------------------------------------------------------------
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) { localStorage.setItem("citymap.token", hash.get("token")); history.replaceState(null, "", location.pathname); }
  state.token = localStorage.getItem("citymap.token");

  async function api(path, opts = {}) {
    const r = await fetch(API + path, { ...opts, headers: { "Authorization": "Bearer " + state.token,
      "Content-Type": "application/json", ...(opts.headers || {}) } });
    if (r.status === 401) { askToken("That token is not valid."); throw new Error("unauthorised"); }
    const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) throw new Error(body.detail || r.statusText);
    return body;
  }
  function askToken(msg) {
    document.getElementById("login-error").textContent = msg || "";
    const d = document.getElementById("login"); if (!d.open) d.showModal();
  }
  document.getElementById("login-form").addEventListener("submit", () => {
    state.token = document.getElementById("token-input").value.trim();
    localStorage.setItem("citymap.token", state.token); start();
  });
  document.getElementById("logout").onclick = () => { localStorage.removeItem("citymap.token"); location.reload(); };

  // ---- helpers ----------------------------------------------------------------------
  const $ = (s) => document.querySelector(s);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmtT = (t) => new Date(t).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
  const n0 = (x) => x == null ? "–" : Math.round(x).toLocaleString();
  const kw = (x) => x == null ? "–" : (x >= 1000 ? (x / 1000).toFixed(2) + " MW" : Math.round(x) + " kW");
  const may = (what) => state.me && state.me.may.includes(what);
  function toast(text, cls = "") {
    const t = document.createElement("div"); t.className = "toast " + cls; t.textContent = text;
    $("#toasts").prepend(t); setTimeout(() => t.remove(), 6000);
  }
  const STATUS_COLOUR = { above: "#ff4d4f", below: "#3d7eff", as_forecast: "#2ecc71", no_forecast: "#8a99a8", no_data: "#4a5866" };
  const STATUS_TEXT = { above: "above forecast (> P90)", below: "below forecast (< P10)", as_forecast: "as forecast",
                        no_forecast: "no forecast", no_data: "no data" };
  const KIND_COLOUR = { red_light: "#ff4d4f", speeding: "#f5a623", wrong_way: "#b36bff", illegal_stop: "#4fb3ff", bus_lane: "#ffd84f" };
  const queueColour = (q) => q >= 20 ? "#ff4d4f" : q >= 10 ? "#f5a623" : "#2ecc71";

  // ---- map --------------------------------------------------------------------------
  const map = L.map("map", { zoomControl: true, attributionControl: false, preferCanvas: false });
  const panes = ["roads", "districts", "feeders", "intersections", "violations"];
  panes.forEach((p, i) => { map.createPane(p); map.getPane(p).style.zIndex = 400 + i * 10; });
  const groups = { "Roads": L.layerGroup(), "Districts: load vs forecast": L.layerGroup(), "Feeders": L.layerGroup(),
                   "Intersections: flow & queue": L.layerGroup(), "Recent violations": L.layerGroup(),
                   "Alerts": L.layerGroup() };
  Object.values(groups).forEach((g) => g.addTo(map));
  L.control.layers(null, groups, { collapsed: false }).addTo(map);
  map.setView([10.79, 106.72], 13);

  function legend() {
    const d = Object.entries(STATUS_TEXT).map(([k, v]) => `<div><span class="sw" style="background:${STATUS_COLOUR[k]}"></span>District ${v}</div>`).join("");
    const q = [["< 10", "#2ecc71"], ["10–19", "#f5a623"], ["≥ 20", "#ff4d4f"]].map(([t, c]) => `<span class="sw dot" style="background:${c}"></span>${t} `).join("");
    $("#legend").innerHTML = `${d}<div>Intersection queue (vehicles): ${q}</div><div class="muted">Circle size = flow (vehicles/h)</div>`;
  }

  async function loadDistricts() {
    if (!may("energy")) return;
    const fc = await api("/districts");
    state.districts = fc;
    const g = groups["Districts: load vs forecast"]; g.clearLayers();
    const layer = L.geoJSON(fc, { pane: "districts",
      style: (f) => ({ color: "#cfd8e3", weight: 1.5, fillColor: STATUS_COLOUR[f.properties.status], fillOpacity: 0.35 }),
      onEachFeature: (f, l) => {
        const p = f.properties;
        l.bindTooltip(`${esc(p.name)}<br>${kw(p.avg_kw)}`, { permanent: true, direction: "center", className: "district-label" });
        l.on("click", () => showScope("district", p.id, p.name));
      } });
    g.addLayer(layer);
    if (!state.fitted) { map.fitBounds(layer.getBounds(), { padding: [20, 20] }); state.fitted = true; }
    state.layers.districts = fc.features.length;
  }
  async function loadFeeders() {
    if (!may("energy")) return;
    const rows = await api("/feeders"); const g = groups["Feeders"]; g.clearLayers();
    rows.filter((f) => f.lon != null).forEach((f) => {
      const u = f.utilisation ?? 0;
      L.circleMarker([f.lat, f.lon], { pane: "feeders", radius: 5, color: "#000", weight: 1,
        fillColor: u > 0.9 ? "#ff4d4f" : u > 0.7 ? "#f5a623" : "#9fb0c0", fillOpacity: 0.9 })
        .bindTooltip(`Feeder ${esc(f.id)}: ${kw(f.avg_kw)} of ${kw(f.rated_kw)} rated`)
        .on("click", () => showScope("feeder", f.id, f.name || f.id)).addTo(g);
    });
    state.layers.feeders = rows.length;
  }
  async function loadRoads() {
    const fc = await api("/roads"); const g = groups["Roads"]; g.clearLayers();
    L.geoJSON(fc, { pane: "roads", style: (f) => ({ color: f.properties.bus_lanes ? "#c9a227" : "#9aa7b4",
      weight: 2 + 1.5 * (f.properties.lanes || 1), opacity: 0.8 }),
      onEachFeature: (f, l) => l.bindTooltip(`${esc(f.properties.edge || f.id)} · ${f.properties.lanes} lanes · ${n0(f.properties.speed_kmh)} km/h` +
        (f.properties.bus_lanes ? " · bus lane" : "")) }).addTo(g);
    state.layers.roads = fc.features.length;
  }
  async function loadIntersections() {
    if (!may("traffic")) return;
    const rows = await api("/intersections"); const g = groups["Intersections: flow & queue"]; g.clearLayers();
    rows.forEach((i) => {
      state.intersections.set(i.id, i);
      const m = L.circleMarker([i.lat, i.lon], { pane: "intersections", radius: 7 + Math.min(18, Math.sqrt(i.flow_vph) / 3),
        color: i.has_recommendation ? "#4fb3ff" : "#fff", weight: i.has_recommendation ? 3 : 1.5,
        fillColor: queueColour(i.queue), fillOpacity: 0.9 });
      m.bindTooltip(`<b>${esc(i.name)}</b><br>${n0(i.flow_vph)} veh/h · queue ${i.queue}` +
        (i.pending_violations ? `<br>${i.pending_violations} violations to review` : "") +
        (i.has_recommendation ? "<br>new signal plan recommended" : ""));
      m.on("click", () => showIntersection(i.id)); m.addTo(g); i.marker = m;
    });
    state.layers.intersections = rows.length;
  }
  function violationMarker(v, fresh) {
    const i = state.intersections.get(v.intersection_id); if (!i) return;
    const jitter = () => (Math.random() - 0.5) * 0.0015;
    const m = L.circleMarker([i.lat + jitter(), i.lon + jitter()], { pane: "violations", radius: fresh ? 9 : 4,
      color: "#000", weight: 1, fillColor: KIND_COLOUR[v.kind] || "#fff", fillOpacity: 0.95 })
      .bindTooltip(`${v.kind.replace("_", " ")} · ${v.vehicle_class} · ${fmtT(v.occurred_at)}`)
      .on("click", () => showIntersection(v.intersection_id));
    m.addTo(groups["Recent violations"]);
    if (fresh) setTimeout(() => m.setRadius(5), 4000);
  }
  async function loadViolations() {
    if (!may("traffic") || state.me.role === "utility") return;
    const since = new Date(Date.now() - 3600e3).toISOString();
    const page = await api(`/violations?limit=200&since=${encodeURIComponent(since)}`);
    groups["Recent violations"].clearLayers(); page.items.forEach((v) => violationMarker(v, false));
    state.layers.violations = page.items.length;
  }
  async function loadAlerts() {
    const page = await api("/alerts?limit=30&acknowledged=false");
    const g = groups["Alerts"]; g.clearLayers();
    page.items.slice().reverse().forEach((a) => addFeed("alert", a, false));
    page.items.forEach((a) => { const where = locate(a.subject_id); if (where)
      L.circleMarker(where, { radius: 16, color: a.severity === "critical" ? "#ff4d4f" : "#f5a623", weight: 3, fill: false })
        .bindTooltip(esc(a.message)).addTo(g); });
    state.layers.alerts = page.items.length;
  }
  function locate(subject) {
    const i = state.intersections.get(subject) || state.intersections.get(subject.replace(/-cam\d+$/, ""));
    if (i) return [i.lat, i.lon];
    const f = (state.feederRows || []).find((x) => x.id === subject); return f ? [f.lat, f.lon] : null;
  }

  // ---- overview and feed -------------------------------------------------------------
  function summary() {
    const ints = [...state.intersections.values()];
    const flow = ints.reduce((s, i) => s + i.flow_vph, 0), pend = ints.reduce((s, i) => s + i.pending_violations, 0);
    const feats = state.districts ? state.districts.features : [];
    const load = feats.reduce((s, f) => s + (f.properties.avg_kw || 0), 0);
    const above = feats.filter((f) => f.properties.status === "above").length;
    const cards = [];
    if (ints.length) cards.push([n0(flow), "vehicles/h at " + ints.length + " intersections"], [pend, "violations to review"]);
    if (feats.length) cards.push([kw(load), "city load now"], [above, "districts above forecast"]);
    $("#summary").innerHTML = cards.map(([b, s]) => `<div class="card"><b>${b}</b><span>${s}</span></div>`).join("");
  }
  function addFeed(kind, d, fresh) {
    const li = document.createElement("li");
    if (kind === "violation") {
      li.dataset.violationId = d.violation_id;
      li.innerHTML = `<span class="tag violation">${esc(d.kind.replace("_", " "))}</span>${esc(d.vehicle_class)} at ${esc(d.intersection_id)} <span class="muted">${fmtT(d.occurred_at)}</span>` +
        (d.details && d.details.plate ? ` <span class="plate">${esc(d.details.plate)}</span>` : "");
      li.onclick = () => showIntersection(d.intersection_id);
    } else {
      li.dataset.alertId = d.alert_id;
      li.innerHTML = `<span class="tag ${esc(d.severity)}">${esc(d.severity)}</span>${esc(d.message)} <span class="muted">${fmtT(d.raised_at)}</span>`;
      li.onclick = () => { const w = locate(d.subject_id); if (w) map.setView(w, 15); };
    }
    if (fresh) li.classList.add("new");
    const feed = $("#feed"); feed.prepend(li); while (feed.children.length > 60) feed.lastChild.remove();
  }

  // ---- charts ------------------------------------------------------------------------
  function chart(el, title, xs, series, opts = {}) {
    el.innerHTML = ""; const w = Math.max(280, el.clientWidth || 380);
    return new uPlot({ title, width: w, height: opts.height || 200, scales: { x: { time: true } },
      axes: [{ stroke: "#9fb0c0", grid: { stroke: "#243444" } }, { stroke: "#9fb0c0", grid: { stroke: "#243444" }, size: 60 }],
      series: [{}, ...series], bands: opts.bands || [] }, [xs, ...series.map((s) => s.data)], el);
  }
  function pivot(rows, key, val) {
    const ts = [...new Set(rows.map((r) => r.bucket))].sort(); const keys = [...new Set(rows.map((r) => r[key]))].sort();
    const idx = new Map(ts.map((t, i) => [t, i]));
    const data = keys.map(() => ts.map(() => null));
    rows.forEach((r) => { data[keys.indexOf(r[key])][idx.get(r.bucket)] = r[val]; });
    return { xs: ts.map((t) => Date.parse(t) / 1000), keys, data };
  }
  const PALETTE = ["#4fb3ff", "#f5a623", "#2ecc71", "#b36bff", "#ff4d4f", "#ffd84f"];

  // ---- intersection panel ------------------------------------------------------------
  async function showIntersection(id) {
    state.selected = { type: "intersection", id };
    const d = $("#detail"); $("#overview").hidden = true; d.hidden = false;
    const i = state.intersections.get(id) || {};
    d.innerHTML = `<button class="back" type="button">← City overview</button>
      <h2>${esc(i.name || id)}</h2>
      <div class="cards"><div class="card"><b>${n0(i.flow_vph)}</b><span>vehicles/h (15 min)</span></div>
      <div class="card"><b>${i.queue ?? "–"}</b><span>vehicles queued now</span></div></div>
      <h3>Vehicles per movement, last 24 h</h3><div id="c-counts" class="chart"></div>
      <h3>Arrivals on red per movement (% of arrivals)</h3><div id="c-aor" class="chart"></div>
      <h3>Queue per lane (max per 15 min)</h3><div id="c-queues" class="chart"></div>
      <h3>Signal plan</h3><div id="plans">loading…</div>
      <div id="vq"></div>`;
    d.querySelector(".back").onclick = overview;
    const [counts, queues] = await Promise.all([api(`/intersections/${id}/counts?resolution=15m&by=movement`),
                                                api(`/intersections/${id}/queues?resolution=15m`)]);
    const pc = pivot(counts, "key", "vehicles");
    chart($("#c-counts"), "", pc.xs, pc.keys.map((k, j) => ({ label: k, stroke: PALETTE[j], width: 2, data: pc.data[j] })));
    counts.forEach((r) => { r.aor_pct = r.arrivals ? Math.round(1000 * r.arrivals_on_red / r.arrivals) / 10 : null; });
    const pa = pivot(counts, "key", "aor_pct");
    chart($("#c-aor"), "", pa.xs, pa.keys.map((k, j) => ({ label: k, stroke: PALETTE[j], width: 1.5, data: pa.data[j] })), { height: 140 });
    const pq = pivot(queues, "lane_id", "max_queue");
    chart($("#c-queues"), "", pq.xs, pq.keys.map((k, j) => ({ label: "lane " + k, stroke: PALETTE[j % 6], width: 1.5, data: pq.data[j] })), { height: 160 });
    renderPlans(id); renderViolationQueue(id);
  }
  function phasesText(p) { return p ? p.plan.phases.map((ph) => `${esc(ph.name)} ${ph.green_s}s`).join(" · ") + ` (cycle ${p.cycle_s}s)` : "–"; }
  async function renderPlans(id) {
    const p = await api(`/intersections/${id}/plans`); const el = $("#plans"); if (!el) return;
    const r = p.recommended;
    let html = `<table><tr><th></th><th>Plan</th><th>Greens</th></tr>
      <tr><td>In force</td><td>${esc(p.current?.plan_id ?? "–")}</td><td>${phasesText(p.current)}</td></tr>`;
    if (r) {
      const gain = r.predicted_delay_current_s - r.predicted_delay_recommended_s;
      html += `<tr><td>Recommended</td><td>${esc(r.plan_id)}</td><td>${phasesText(r)}</td></tr></table>
        <p>Predicted delay per vehicle: ${r.predicted_delay_current_s?.toFixed(1)} s → <b>${r.predicted_delay_recommended_s?.toFixed(1)} s</b>
        <span class="${gain >= 0 ? "better" : "worse"}">(${gain >= 0 ? "−" : "+"}${Math.abs(gain).toFixed(1)} s)</span></p>`;
      if (may("approve_plans")) html += `<button id="approve-plan" class="primary" type="button">Approve and send to controller</button>
        <button id="reject-plan" class="danger" type="button">Reject</button>`;
    } else html += `</table><p class="muted">No new recommendation.</p>`;
    const outcomes = (await api(`/alerts?source=traffic&subject_id=${encodeURIComponent(id)}&limit=50`)).items
      .filter((a) => a.kind === "plan_outcome");
    if (outcomes.length) {
      const o = outcomes[0].details, gain = o.delay_before_s - o.delay_after_s;
      html += `<p id="plan-outcome">Measured by the controller after ${esc(o.plan_id)} was installed:
        ${Number(o.delay_before_s).toFixed(1)} s → <b>${Number(o.delay_after_s).toFixed(1)} s</b> per vehicle
        <span class="${gain >= 0 ? "better" : "worse"}">(${gain >= 0 ? "−" : "+"}${Math.abs(gain).toFixed(1)} s)</span>
        <span class="muted">over ${Math.round(o.measured_s / 60)} min</span></p>`;
    }
    const hist = p.history.filter((h) => h.review_state || h.kind === "current").slice(0, 6);
    if (hist.length) html += `<h3>History</h3><table>${hist.map((h) => `<tr><td>${fmtT(h.valid_from)}</td><td>${esc(h.plan_id)}</td><td>${esc(h.kind)}</td><td>${esc(h.review_state ?? "")} ${esc(h.reviewed_by ?? "")}</td></tr>`).join("")}</table>`;
    el.innerHTML = html;
    const act = (what) => async () => {
      el.querySelectorAll("button").forEach((b) => (b.disabled = true));
      try { const res = await api(`/intersections/${id}/plans/${r.plan_id}/${what}`, { method: "POST", body: "{}" });
        toast(what === "approve" ? `Plan ${r.plan_id} sent to ${res.mqtt_topic}` : `Plan ${r.plan_id} rejected`);
      } catch (e) { toast("Failed: " + e.message, "critical"); }
      renderPlans(id); loadIntersections();
    };
    if ($("#approve-plan")) { $("#approve-plan").onclick = act("approve"); $("#reject-plan").onclick = act("reject"); }
  }
  async function renderViolationQueue(id) {
    if (!may("traffic") || state.me.role === "utility") return;
    const page = await api(`/violations?intersection_id=${id}&review_state=pending&limit=20`);
    const el = $("#vq"); if (!el) return;
    const ev = may("evidence");
    el.innerHTML = `<h3>Violations to review (${page.items.length}${page.next_offset ? "+" : ""})</h3>` + (page.items.length ? `<table id="violation-queue">
      <tr><th>When</th><th>What</th>${ev ? "<th>Plate</th><th>Evidence</th><th></th>" : ""}</tr>` +
      page.items.map((v) => `<tr data-violation-id="${esc(v.violation_id)}"><td>${fmtT(v.occurred_at)}</td>
        <td>${esc(v.kind.replace("_", " "))}, ${esc(v.vehicle_class)} (${Math.round(v.confidence * 100)}%)</td>` +
        (ev ? `<td class="plate">${esc(v.details.plate ?? "")}</td>
        <td class="evidence"><a href="${API}/violations/${esc(v.violation_id)}/evidence?access_token=${encodeURIComponent(state.token)}" target="_blank" rel="noopener">image</a></td>
        <td><button class="primary" data-d="confirm" type="button">Confirm</button> <button class="danger" data-d="reject" type="button">Reject</button></td>` : "") +
        `</tr>`).join("") + "</table>" : `<p class="muted">Nothing pending.</p>`);
    el.querySelectorAll("button[data-d]").forEach((b) => (b.onclick = async () => {
      const vid = b.closest("tr").dataset.violationId;
      try { await api(`/violations/${vid}/review`, { method: "POST", body: JSON.stringify({ decision: b.dataset.d }) });
        b.closest("tr").remove(); } catch (e) { toast("Failed: " + e.message, "critical"); }
    }));
  }

  // ---- district / feeder panel -------------------------------------------------------
  async function showScope(scope, id, name) {
    state.selected = { type: scope, id };
    const d = $("#detail"); $("#overview").hidden = true; d.hidden = false;
    const q = `scope=${scope}&scope_id=${encodeURIComponent(id)}`;
    d.innerHTML = `<button class="back" type="button">← City overview</button>
      <h2>${scope === "district" ? "District" : "Feeder"} ${esc(name)}</h2><div id="scope-cards" class="cards"></div>
      <h3>Load: last 7 days and the next 48 h forecast (P10–P90 band)</h3><div id="c-load" class="chart"></div>
      <p><a id="csv" href="${API}/loads.csv?${q}&access_token=${encodeURIComponent(state.token)}" download>⬇ Download CSV</a></p>
      <h3>Forecast accuracy, last 7 days</h3><div id="acc"></div>
      <div id="scope-extra"></div><h3>Alerts</h3><ol id="scope-alerts" class="feed"></ol>`;
    d.querySelector(".back").onclick = overview;
    const now = Date.now();
    const [loads, fc, acc] = await Promise.all([api(`/loads?${q}&resolution=15m`), api(`/forecasts?${q}`), api(`/forecasts/accuracy?${q}&lead_h=0`)]);
    const rows = new Map();
    loads.forEach((l) => rows.set(Date.parse(l.bucket) / 1000, [l.avg_kw, null, null, null]));
    fc.points.filter((p) => Date.parse(p.target) <= now + 48 * 3600e3).forEach((p) => {
      const t = Date.parse(p.target) / 1000; const r = rows.get(t) || [null, null, null, null];
      r[1] = p.p10; r[2] = p.p50; r[3] = p.p90; rows.set(t, r); });
    const xs = [...rows.keys()].sort((a, b) => a - b), col = (j) => xs.map((t) => rows.get(t)[j]);
    chart($("#c-load"), "", xs, [
      { label: "actual kW", stroke: "#e8eef4", width: 1.5, data: col(0) },
      { label: "P10", stroke: "#4fb3ff55", width: 1, data: col(1) },
      { label: "forecast P50", stroke: "#4fb3ff", width: 2, dash: [6, 4], data: col(2) },
      { label: "P90", stroke: "#4fb3ff55", width: 1, data: col(3) },
    ], { height: 240, bands: [{ series: [4, 2], fill: "#4fb3ff33" }] });
    const last = loads[loads.length - 1];
    const feat = state.districts?.features.find((f) => f.id === id);
    $("#scope-cards").innerHTML = `<div class="card"><b>${kw(last?.avg_kw)}</b><span>now</span></div>` +
      (feat ? `<div class="card"><b><span class="tag ${feat.properties.status}">${STATUS_TEXT[feat.properties.status]}</span></b><span>forecast P50 ${kw(feat.properties.p50)}</span></div>` : "") +
      `<div class="card"><b>${fc.issued_at ? fmtT(fc.issued_at) : "–"}</b><span>forecast issued (${esc(fc.model ?? "")})</span></div>`;
    $("#acc").innerHTML = acc.n ? `<table><tr><th>Error (MAPE)</th><td>${acc.mape_pct.toFixed(1)} %</td></tr>
      <tr><th>Mean abs. error</th><td>${kw(acc.mae_kw)}</td></tr><tr><th>Inside P10–P90</th><td>${acc.coverage_p10_p90_pct.toFixed(0)} % (ideal 80 %)</td></tr>
      <tr><th>Bias</th><td>${acc.bias_kw >= 0 ? "+" : ""}${kw(acc.bias_kw)}</td></tr><tr><th>Intervals</th><td>${acc.n}</td></tr></table>` : `<p class="muted">Not enough history yet.</p>`;
    const subjects = [id];
    if (scope === "district") {
      const feeders = (state.feederRows || []).filter((f) => f.district_id === id); subjects.push(...feeders.map((f) => f.id));
      $("#scope-extra").innerHTML = `<h3>Feeders</h3><table>${feeders.map((f) => `<tr data-feeder="${esc(f.id)}"><td><a href="#">${esc(f.id)}</a></td><td>${kw(f.avg_kw)} / ${kw(f.rated_kw)}</td><td>${Math.round((f.utilisation ?? 0) * 100)} %</td></tr>`).join("")}</table>`;
      $("#scope-extra").querySelectorAll("tr[data-feeder]").forEach((tr) => tr.querySelector("a").onclick = (e) => { e.preventDefault(); showScope("feeder", tr.dataset.feeder, tr.dataset.feeder); });
    }
    const alerts = (await api(`/alerts?source=energy&limit=200`)).items.filter((a) => subjects.includes(a.subject_id));
    $("#scope-alerts").innerHTML = alerts.length ? alerts.slice(0, 20).map((a) => `<li><span class="tag ${esc(a.severity)}">${esc(a.severity)}</span>${esc(a.message)} <span class="muted">${fmtT(a.raised_at)}</span></li>`).join("") : `<li class="muted">No alerts in the last 7 days.</li>`;
  }
  function overview() { state.selected = null; $("#detail").hidden = true; $("#overview").hidden = false; summary(); }

  // ---- live --------------------------------------------------------------------------
  let refreshTimer = null;
  function refreshSoon() { clearTimeout(refreshTimer); refreshTimer = setTimeout(async () => { await Promise.all([loadIntersections(), loadDistricts()]); summary(); }, 5000); }
  function connectLive() {
    const es = new EventSource(`${API}/live?access_token=${encodeURIComponent(state.token)}`);
    es.addEventListener("hello", () => { $("#live").className = "pill on"; $("#live").textContent = "● live"; });
    es.onerror = () => { $("#live").className = "pill off"; $("#live").textContent = "● reconnecting"; };
    es.addEventListener("violation", (e) => { const v = JSON.parse(e.data); state.events.push(["violation", v]);
      addFeed("violation", v, true); violationMarker(v, true);
      toast(`${v.kind.replace("_", " ")} at ${state.intersections.get(v.intersection_id)?.name || v.intersection_id}`);
      if (state.selected?.id === v.intersection_id) renderViolationQueue(v.intersection_id); });
    es.addEventListener("alert", (e) => { const a = JSON.parse(e.data); state.events.push(["alert", a]);
      addFeed("alert", a, true); toast(a.message, a.severity); });
    es.addEventListener("count", refreshSoon); es.addEventListener("load", refreshSoon);
    es.addEventListener("plan", (e) => { const p = JSON.parse(e.data); if (state.selected?.id === p.intersection_id) renderPlans(p.intersection_id); });
  }

  // ---- start -------------------------------------------------------------------------
  async function start() {
    if (!state.token) { askToken(); return; }
    try { state.me = await api("/me"); } catch (e) { return; }
    $("#login").close?.();
    $("#city").textContent = "· " + state.me.city.toUpperCase() + " city map";
    $("#who").textContent = `${state.me.name} (${state.me.role})`;
    legend(); map.invalidateSize();
    if (may("energy")) state.feederRows = await api("/feeders");
    await Promise.all([loadRoads(), loadDistricts(), loadIntersections(), loadFeeders()]);
    await Promise.all([loadViolations(), loadAlerts()]);
    if (!state.fitted && state.intersections.size) { map.fitBounds([...state.intersections.values()].map((i) => [i.lat, i.lon]), { padding: [40, 40] }); state.fitted = true; }
    summary(); connectLive();
    setInterval(() => { loadIntersections().then(summary); }, 60000);
    state.ready = true; document.body.dataset.ready = "1";
  }
  new ResizeObserver(() => map.invalidateSize()).observe(document.getElementById("map"));
  start();
})();
