// curtaild operator dashboard: plain JS, no build step, nothing from outside the edge box.
// Every string from the API is written with textContent (reasons and ids come from config
// and operators). Times are the daemon's: "now" is the latest status's `at`, never the
// laptop's clock.
"use strict";

const TOKEN_KEY = "curtaild.token";
const API = "api/v1/";
const WINDOW_MS = 3600 * 1000;
const MAX_POINTS = 4000; // an hour of 1 s statuses, with room to spare
// No byte (status or keepalive) for this long and the stream counts as dead.
const STALL_MS = 20 * 1000;
const BACKOFF_MS = [1000, 2000, 5000, 10000, 20000, 30000];
const MINER_ROWS = 500; // rows drawn in the miners table; the rest is counted, not drawn
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

class AuthError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

class HttpError extends Error {}

let session = null; // {token, ctrl: AbortController, compliance: bool (its loop runs)}
let points = []; // {t: ms, m: measured kW | null, l: limit kW | null}, oldest first
let lastStatus = null;

// -- session ---------------------------------------------------------------------------

function start(token) {
  stop();
  session = { token, ctrl: new AbortController() };
  $("signout").hidden = false;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  run(session);
}

function stop() {
  if (session) session.ctrl.abort();
  session = null;
}

function signOut(message) {
  stop();
  sessionStorage.removeItem(TOKEN_KEY);
  clearData();
  $("dashboard").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  const err = $("auth-error");
  err.textContent = message || "";
  err.hidden = !message;
  setConnection("signed-out", "Signed out");
  $("token").value = "";
  $("token").focus();
}

function refused(err) {
  const detail = err.message ? `: ${err.message}` : "";
  signOut(`Token refused (${err.status})${detail}. Check the token and try again.`);
}

async function run(sess) {
  let attempt = 0;
  const signal = sess.ctrl.signal;
  while (!signal.aborted) {
    setConnection(attempt ? "reconnecting" : "connecting", attempt ? "Reconnecting…" : "Connecting…");
    let heard = false;
    try {
      const [history, status] = await Promise.all([
        api(sess, "history", signal),
        api(sess, "status", signal),
      ]);
      if (signal.aborted) return;
      sessionStorage.setItem(TOKEN_KEY, sess.token);
      seed(history);
      showStatus(status);
      if (!sess.compliance) {
        sess.compliance = true; // the token is good: one loop per session
        complianceLoop(sess);
      }
      await stream(sess, (s) => {
        heard = true;
        setConnection("live", "Live");
        showStatus(s);
      });
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof AuthError) {
        refused(err);
        return;
      }
    }
    if (heard) attempt = 0;
    const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    attempt += 1;
    await countdown(delay, signal);
  }
}

async function countdown(ms, signal) {
  const until = Date.now() + ms;
  while (!signal.aborted) {
    const left = until - Date.now();
    if (left <= 0) return;
    setConnection("reconnecting", `Disconnected — reconnecting in ${Math.ceil(left / 1000)} s`);
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.min(left, 1000));
      signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }
}

// -- HTTP ------------------------------------------------------------------------------

function headers(sess, accept) {
  return { Authorization: `Bearer ${sess.token}`, Accept: accept };
}

async function check(res, what) {
  if (res.status === 401 || res.status === 403) {
    let detail = "";
    try {
      const problem = await res.json();
      detail = problem.detail || problem.title || "";
    } catch {
      detail = "";
    }
    throw new AuthError(res.status, detail);
  }
  if (!res.ok) {
    let detail = "";
    try {
      detail = (await res.json()).detail || "";
    } catch {
      detail = "";
    }
    throw new HttpError(`${what}: HTTP ${res.status}${detail ? `, ${detail}` : ""}`);
  }
}

async function api(sess, path, signal) {
  const res = await fetch(API + path, {
    headers: headers(sess, "application/json"),
    signal,
    cache: "no-store",
  });
  await check(res, path);
  return res.json();
}

// Server-sent events over fetch(): EventSource cannot send an Authorization header.
async function stream(sess, onStatus) {
  const ctrl = new AbortController();
  const outer = sess.ctrl.signal;
  const cancel = () => ctrl.abort();
  outer.addEventListener("abort", cancel, { once: true });
  let timer = 0;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ctrl.abort(new HttpError("stream: silent")), STALL_MS);
  };
  try {
    arm();
    const res = await fetch(API + "stream", {
      headers: headers(sess, "text/event-stream"),
      signal: ctrl.signal,
      cache: "no-store",
    });
    await check(res, "stream");
    const parser = new SseParser((type, data) => {
      if (type === "status") onStatus(JSON.parse(data));
    });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      arm();
      parser.feed(value);
    }
  } finally {
    clearTimeout(timer);
    outer.removeEventListener("abort", cancel);
  }
}

class SseParser {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.rest = "";
    this.type = "";
    this.data = [];
  }

  feed(text) {
    this.rest += text;
    const eol = /\r\n|\r|\n/g;
    let from = 0;
    let m;
    while ((m = eol.exec(this.rest)) !== null) {
      // A lone \r at the end may be the first half of \r\n: wait for the next chunk.
      if (m[0] === "\r" && m.index === this.rest.length - 1) break;
      this.line(this.rest.slice(from, m.index));
      from = eol.lastIndex;
    }
    this.rest = this.rest.slice(from);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.dispatch(this.type || "message", this.data.join("\n"));
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: keepalive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
  }
}

// -- formatting ------------------------------------------------------------------------

const kwFormat = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });

function kw(value) {
  return value === null || value === undefined ? "—" : kwFormat.format(value);
}

// TH/s and J/TH as kW: one decimal, grouped.
const decimal = kw;

// What a miner runs at: asleep, cut, unknown, or its power target (tuned: the allocation's).
function setting(m) {
  if (m.setting === "tuned" || m.setting === "lowered") {
    const watts = m.target_w === null || m.target_w === undefined ? "" : `${m.target_w.toLocaleString("en-US")} W `;
    return `${watts}${m.setting}`;
  }
  return m.setting || "—";
}

function celsius(value) {
  return value === null || value === undefined ? "—" : value.toFixed(1);
}

const pad = (n) => String(n).padStart(2, "0");

function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A time near the daemon's now as HH:MM:SS, a far one with its date.
function when(iso) {
  if (!iso) return "—";
  const ms = Date.parse(iso);
  const now = lastStatus ? Date.parse(lastStatus.at) : ms;
  if (Math.abs(ms - now) < 20 * 3600 * 1000) return clock(ms);
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function relative(iso) {
  if (!iso || !lastStatus) return "";
  const s = Math.round((Date.parse(iso) - Date.parse(lastStatus.at)) / 1000);
  const span = (v) => (v >= 120 ? `${Math.round(v / 60)} min` : `${v} s`);
  return s >= 0 ? `in ${span(s)}` : `${span(-s)} ago`;
}

// -- rendering -------------------------------------------------------------------------

function text(id, value) {
  $(id).textContent = value;
}

function el(tag, content, className) {
  const node = document.createElement(tag);
  if (content !== undefined && content !== null) node.textContent = content;
  if (className) node.className = className;
  return node;
}

// cells: strings, or {text, cls, title}
function fillTable(id, rows, empty) {
  const body = $(id).tBodies[0];
  const columns = $(id).tHead.rows[0].cells.length;
  if (!rows.length) {
    const cell = el("td", empty, "empty");
    cell.colSpan = columns;
    const tr = el("tr");
    tr.append(cell);
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = el("tr");
      if (row.cls) tr.className = row.cls;
      if (row.key) tr.dataset.key = row.key;
      for (const cell of row.cells) {
        const c = typeof cell === "object" && cell !== null ? cell : { text: cell };
        const td = el("td", c.text, c.cls);
        if (c.title) td.title = c.title;
        tr.append(td);
      }
      return tr;
    }),
  );
}

function timeCell(iso) {
  return { text: when(iso), title: iso || "" };
}

function showStatus(s) {
  lastStatus = s;
  text("site", s.site);
  text("as-of", `as of ${clock(Date.parse(s.at))}`);
  showAutomation(s.automation);
  showPower(s);
  showModes(s.miners);
  showContainers(s.containers);
  showSignals(s.signals, s.deadlines);
  showDesk(s.overrides, s.holds);
  showAlarms(s.alarms, s.lying);
  addPoint(s);
}

function showAutomation(a) {
  const box = $("automation");
  box.dataset.state = a.paused ? "paused" : "running";
  if (!a.paused) {
    box.replaceChildren(el("strong", "Automation running"));
    return;
  }
  const since = a.since ? ` since ${when(a.since)}` : "";
  box.replaceChildren(
    el("strong", `AUTOMATION PAUSED by ${a.by || "unknown"}${since}`),
    el("span", a.reason ? `Reason: ${a.reason}` : "No reason given"),
    el("span", "Nothing is woken, raised or restored; sheds for grid limits go on.", "muted"),
  );
}

function showPower(s) {
  const limit = s.limit;
  const measured = $("measured-kw");
  measured.textContent = kw(s.measured_kw);
  measured.classList.toggle("over", limit !== null && s.measured_kw !== null && s.measured_kw > limit.limit_kw);
  text("measured-by", s.measured_kw === null ? "meter stale: draw unknown" : `by the ${s.measured_by}`);
  text("limit-kw", limit ? kw(limit.limit_kw) : "—");
  const due = $("limit-due");
  due.replaceChildren();
  if (limit && limit.emergency) due.append(el("span", "EMERGENCY", "badge danger"), " ");
  if (limit && limit.due) {
    const deadline = s.deadlines.find((d) => Date.parse(d.due_at) === Date.parse(limit.due));
    if (deadline && deadline.status !== "pending") due.append(`due ${when(limit.due)}: ${deadline.status}`);
    else due.append(`reach by ${when(limit.due)} (${relative(limit.due)})`);
  }
  if (!limit) due.append("no plan yet");
  text("grid-limit-kw", kw(s.grid_limit_kw));
  text("expected-kw", kw(s.expected_kw));
  text("hashrate-ths", decimal(s.hashrate_ths));
  text("expected-ths", decimal(s.expected_hashrate_ths));
  text("expected-ths-note", s.expected_hashrate_ths === null ? "no efficiency curves" : "");
  text("efficiency-j-th", decimal(s.efficiency_j_th));
  text("fresh-draw-kw", kw(s.fresh_draw_kw));
  const reasons = limit ? limit.reasons : [];
  $("limit-reasons").replaceChildren(
    ...(reasons.length ? reasons.map((r) => el("li", r)) : [el("li", "—", "muted")]),
  );
}

function showModes(m) {
  for (const name of ["total", "mining", "sleeping", "lowered", "tuned", "pending", "unknown", "unhealthy", "cut"]) {
    text(`mode-${name}`, String(m[name] ?? 0));
    const worrying = ["unknown", "unhealthy", "cut"].includes(name) && m[name] > 0;
    $(`mode-${name}`).parentElement.classList.toggle("alert", worrying);
  }
}

function showContainers(containers) {
  fillTable(
    "containers",
    containers.map((c) => {
      const other = c.miners.total - c.miners.mining - c.miners.sleeping;
      const ambient = c.ambient_c === null ? { text: "—", title: "no sensor, or stale: counted as cold" } : celsius(c.ambient_c);
      return {
        key: c.name,
        cells: [
          c.name,
          { ...(typeof ambient === "string" ? { text: ambient } : ambient), cls: "num" },
          { text: celsius(c.board_temp_max_c), cls: "num" },
          { text: kw(c.draw_kw), cls: "num" },
          { text: String(c.miners.mining), cls: "num" },
          { text: String(c.miners.sleeping), cls: "num" },
          { text: String(other), cls: other ? "num warn" : "num" },
        ],
      };
    }),
    "No containers",
  );
  const select = $("filter-container");
  const names = containers.map((c) => c.name);
  const have = [...select.options].slice(1).map((o) => o.value);
  if (names.join("\n") !== have.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(el("option", "any"), ...names.map((n) => el("option", n)));
    select.options[0].value = "";
    select.value = names.includes(chosen) ? chosen : "";
  }
}

function showSignals(signals, deadlines) {
  fillTable(
    "signals",
    signals.map((g) => {
      const flags = [g.active ? "active" : "inactive"];
      if (g.emergency) flags.unshift("EMERGENCY");
      const amount = g.limit_kw !== null && g.limit_kw !== undefined ? `≤ ${kw(g.limit_kw)}` : g.granted_kw !== null && g.granted_kw !== undefined ? `+ ${kw(g.granted_kw)}` : "—";
      return {
        key: g.id,
        cls: [g.emergency ? "emergency" : "", g.active ? "" : "inactive"].join(" ").trim(),
        cells: [
          g.id,
          { text: String(g.revision), cls: "num" },
          g.type,
          g.source,
          { text: amount, cls: "num" },
          timeCell(g.start || g.received_at),
          g.end ? timeCell(g.end) : "until cancelled",
          flags.join(" · "),
        ],
      };
    }),
    "No signals held",
  );
  fillTable(
    "deadlines",
    deadlines.map((d) => ({
      key: `${d.signal_id}#r${d.revision}`,
      cls: `status-${d.status}`,
      cells: [
        `${d.signal_id} r${d.revision}`,
        d.kind,
        { text: kw(d.limit_kw), cls: "num" },
        { text: `${when(d.due_at)} ${d.status === "pending" ? `(${relative(d.due_at)})` : ""}`.trim(), title: d.due_at },
        { text: d.status, cls: "state" },
        { text: d.time_to_target_s === null || d.time_to_target_s === undefined ? "—" : d.time_to_target_s.toFixed(1), cls: "num" },
        { text: kw(d.measured_kw), cls: "num" },
      ],
    })),
    "No deadlines",
  );
}

function showDesk(overrides, holds) {
  fillTable(
    "overrides",
    overrides.map((o) => ({
      key: o.id,
      cells: [{ text: kw(o.limit_kw), cls: "num" }, o.by, { text: o.reason, cls: "wrap" }, o.expires_at ? timeCell(o.expires_at) : "never"],
    })),
    "No overrides",
  );
  fillTable(
    "holds",
    holds.map((h) => ({
      key: h.miner,
      cells: [h.miner, h.mode, h.by, { text: h.reason, cls: "wrap" }, timeCell(h.until)],
    })),
    "No holds",
  );
}

function showAlarms(alarms, lying) {
  const list = $("alarms");
  if (!alarms.length) {
    list.replaceChildren(el("li", "No standing alarms", "muted"));
  } else {
    list.replaceChildren(
      ...alarms.map((a) => {
        const li = el("li", null, "alarm");
        li.append(el("strong", `${a.kind} · ${a.subject}`), ` since ${when(a.since)}: `, el("span", a.detail));
        return li;
      }),
    );
  }
  const liars = $("lying");
  liars.textContent = lying.length ? lying.join(", ") : "None";
  liars.classList.toggle("alert", lying.length > 0);
}

// -- miners list -----------------------------------------------------------------------

async function loadMiners(event) {
  event.preventDefault();
  const sess = session;
  if (!sess) return;
  const query = new URLSearchParams();
  for (const name of ["container", "mode", "health"]) {
    const value = $(`filter-${name}`).value;
    if (value) query.set(name, value);
  }
  const note = $("miners-note");
  note.textContent = "Loading…";
  try {
    const qs = query.toString();
    const out = await api(sess, qs ? `miners?${qs}` : "miners", sess.ctrl.signal);
    const shown = out.miners.slice(0, MINER_ROWS);
    fillTable(
      "miners",
      shown.map((m) => ({
        key: m.id,
        cls: m.health === "ok" ? "" : "unhealthy",
        cells: [
          m.id,
          m.family,
          m.container,
          m.mode,
          { text: m.health_reason ? `${m.health}: ${m.health_reason}` : m.health, cls: "wrap" },
          { text: kw(m.power_kw), cls: "num" },
          { text: decimal(m.hashrate_ths), cls: "num" },
          { text: setting(m), cls: `setting-${m.setting}` },
          { text: kw(m.rated_kw), cls: "num" },
          { text: m.board_temps_c.length ? celsius(Math.max(...m.board_temps_c)) : "—", cls: "num" },
          minerPools(m),
          minerNow(m),
        ],
      })),
      "No miner matches",
    );
    const at = lastStatus ? ` as of ${clock(Date.parse(lastStatus.at))}` : "";
    note.textContent = `${shown.length} shown of ${out.total}${at}`;
  } catch (err) {
    if (err instanceof AuthError) refused(err);
    else if (!sess.ctrl.signal.aborted) note.textContent = `Could not load miners (${err.message})`;
  }
}

function minerNow(m) {
  const parts = [];
  if (m.pending) parts.push(`command: ${m.pending}`);
  if (m.warming_until) parts.push(`warming until ${when(m.warming_until)}`);
  if (m.hold) parts.push(`held ${m.hold.mode} by ${m.hold.by} until ${when(m.hold.until)}`);
  if (m.lying) parts.push(`lying: ${m.lying}`);
  return parts.join("; ") || "—";
}

// -- chart -----------------------------------------------------------------------------

function seed(history) {
  const seeded = history.points.map(toPoint);
  const last = seeded.length ? seeded[seeded.length - 1].t : -Infinity;
  points = seeded.concat(points.filter((p) => p.t > last));
  trim();
  draw();
}

function toPoint(p) {
  return { t: Date.parse(p.at), m: p.measured_kw, l: p.limit_kw };
}

function addPoint(s) {
  const p = { t: Date.parse(s.at), m: s.measured_kw, l: s.limit ? s.limit.limit_kw : null };
  const last = points[points.length - 1];
  if (last && p.t < last.t) return;
  if (last && p.t === last.t) points[points.length - 1] = p;
  else points.push(p);
  trim();
  draw();
}

function trim() {
  if (!points.length) return;
  const from = points[points.length - 1].t - WINDOW_MS;
  let i = 0;
  while (i < points.length && points[i].t < from) i += 1;
  if (points.length - i > MAX_POINTS) i = points.length - MAX_POINTS;
  if (i) points = points.slice(i);
}

function niceStep(span, ticks) {
  const raw = span / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * mag >= raw) return f * mag;
  return 10 * mag;
}

const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800].map((s) => s * 1000);

function svg(tag, attrs, content) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (content !== undefined) node.textContent = content;
  return node;
}

function draw() {
  const chart = $("chart");
  chart.dataset.points = String(points.length);
  const width = Math.max(chart.clientWidth, 280);
  const height = Math.max(chart.clientHeight, 160);
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!points.length) {
    chart.setAttribute("aria-label", "No data yet");
    chart.replaceChildren(svg("text", { x: width / 2, y: height / 2, class: "nodata" }, "No data yet"));
    return;
  }
  const pad = { left: 58, right: 14, top: 12, bottom: 28 };
  const t1 = points[points.length - 1].t;
  const t0 = Math.min(Math.max(points[0].t, t1 - WINDOW_MS), t1 - 60 * 1000);
  let top = 0;
  for (const p of points) top = Math.max(top, p.m ?? 0, p.l ?? 0);
  const yStep = niceStep(top > 0 ? top * 1.1 : 1, 4);
  const yMax = Math.max(yStep, Math.ceil((top * 1.1) / yStep) * yStep);
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / yMax) * (height - pad.top - pad.bottom);

  const nodes = [];
  for (let v = 0; v <= yMax + yStep / 2; v += yStep) {
    nodes.push(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }));
    nodes.push(svg("text", { x: pad.left - 6, y: y(v) + 4, class: "ylabel" }, kwFormat.format(v).replace(/\.0$/, "")));
  }
  const span = t1 - t0;
  const tStep = TIME_STEPS.find((s) => span / s <= 6) || 3600 * 1000;
  for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
    nodes.push(svg("line", { x1: x(t), x2: x(t), y1: pad.top, y2: height - pad.bottom, class: "grid" }));
    nodes.push(svg("text", { x: x(t), y: height - 8, class: "xlabel" }, clock(t).slice(0, tStep < 60000 ? 8 : 5)));
  }

  // The limit is a step line: it holds until the next point changes it.
  let limitPath = "";
  let prev = null;
  for (const p of points) {
    if (p.l === null || p.l === undefined) {
      prev = null;
      continue;
    }
    limitPath += prev === null ? `M${x(p.t).toFixed(1)},${y(p.l).toFixed(1)}` : `H${x(p.t).toFixed(1)}V${y(p.l).toFixed(1)}`;
    prev = p;
  }
  if (prev !== null) limitPath += `H${x(t1).toFixed(1)}`;
  let measuredPath = "";
  let gap = true;
  for (const p of points) {
    if (p.m === null || p.m === undefined) {
      gap = true;
      continue;
    }
    measuredPath += `${gap ? "M" : "L"}${x(p.t).toFixed(1)},${y(p.m).toFixed(1)}`;
    gap = false;
  }
  if (limitPath) nodes.push(svg("path", { d: limitPath, class: "limit", "data-testid": "chart-limit" }));
  if (measuredPath) nodes.push(svg("path", { d: measuredPath, class: "measured", "data-testid": "chart-measured" }));
  const last = points[points.length - 1];
  if (last.m !== null && last.m !== undefined) {
    nodes.push(svg("circle", { cx: x(last.t), cy: y(last.m), r: 3.5, class: "measured-dot" }));
  }
  chart.replaceChildren(...nodes);
  chart.setAttribute("aria-label", `Measured ${kw(last.m)} kW against a limit of ${kw(last.l)} kW; ${points.length} points since ${clock(points[0].t)}`);
}

// -- state shown -----------------------------------------------------------------------

function setConnection(state, label) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = label;
}

function clearData() {
  points = [];
  lastStatus = null;
  for (const id of ["site", "as-of", "measured-by", "limit-due", "miners-note", "expected-ths-note"]) text(id, "");
  for (const id of ["measured-kw", "limit-kw", "grid-limit-kw", "expected-kw", "hashrate-ths", "expected-ths", "efficiency-j-th", "fresh-draw-kw"]) text(id, "—");
  for (const id of ["limit-reasons", "alarms", "automation", "lying"]) $(id).replaceChildren();
  for (const table of document.querySelectorAll("main table")) table.tBodies[0].replaceChildren();
  fillTable("miners", [], "Choose filters and press Show");
  text("compliance-note", "Not loaded yet");
  text("chain", "—");
  $("chain").dataset.state = "unknown";
  document.querySelectorAll(".modes .n").forEach((n) => { n.textContent = "—"; });
  draw();
}

// -- wiring ----------------------------------------------------------------------------

function boot() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    $("auth-error").hidden = true;
    start(token);
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("miner-filter").addEventListener("submit", loadMiners);
  new ResizeObserver(() => draw()).observe($("chart"));
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else signOut("");
}

boot();
