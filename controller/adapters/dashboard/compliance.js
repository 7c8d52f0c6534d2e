// curtaild dashboard: the compliance view (the energy account's figures for today and this
// month, grant use, excess, unapproved pools, the journal's chain) and the miners' pools
// column. Loaded before app.js and called by it; it uses app.js's helpers ($, api, fillTable,
// kw, when, clock) once the page runs. Every string is written with textContent.
"use strict";

// The compliance figures move by the minute (the account closes 1-minute intervals).
const COMPLIANCE_MS = 30 * 1000;

const countFormat = new Intl.NumberFormat("en-US");

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s <= 0) return "none";
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
}

function percent(share) {
  return share === null || share === undefined ? "—" : `${(share * 100).toFixed(1)} %`;
}

// -- the compliance view ---------------------------------------------------------------

const ENERGY_ROWS = [
  ["within_grants_kwh", "Inside grants", "part"],
  ["base_allowance_kwh", "In the base allowance", "part"],
  ["excess_kwh", "In excess", "part"],
  ["grid_kwh", "Grid draw", ""],
  ["exempt_generation_kwh", "Own generation (exempt)", ""],
  ["allowed_kwh", "Allowed by the grid", ""],
];

async function complianceLoop(sess) {
  const signal = sess.ctrl.signal;
  while (!signal.aborted) {
    await loadCompliance(sess);
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, COMPLIANCE_MS);
      signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }
}

async function loadCompliance(sess) {
  const note = $("compliance-note");
  try {
    const c = await api(sess, "compliance", sess.ctrl.signal);
    if (sess.ctrl.signal.aborted) return;
    showCompliance(c);
    note.textContent = lastStatus ? `as of ${clock(Date.parse(lastStatus.at))}` : "";
  } catch (err) {
    if (sess.ctrl.signal.aborted) return;
    if (err instanceof AuthError) refused(err);
    else note.textContent = `Compliance not available (${err.message})`;
  }
}

function showCompliance(c) {
  const kwh = (v, alarm) => ({ text: kw(v), cls: alarm && v > 0 ? "num alarm" : "num" });
  fillTable(
    "energy",
    [
      ...ENERGY_ROWS.map(([name, label, cls]) => ({
        key: name,
        cls,
        cells: [`${label}, kWh`, kwh(c.today[name], name === "excess_kwh"), kwh(c.month[name], name === "excess_kwh")],
      })),
      { key: "gap_s", cells: ["Meter gaps", { text: duration(c.today.gap_s), cls: "num" }, { text: duration(c.month.gap_s), cls: "num" }] },
      { key: "estimated_s", cells: ["Estimated from the miners", { text: duration(c.today.estimated_s), cls: "num" }, { text: duration(c.month.estimated_s), cls: "num" }] },
    ],
    "No figures",
  );
  fillTable(
    "grant-use",
    c.grants.map((g) => ({
      key: g.id,
      cells: [g.id, g.source, { text: kw(g.granted_kwh), cls: "num" }, { text: kw(g.used_kwh), cls: "num" }, { text: percent(g.utilisation), cls: "num" }],
    })),
    "No grant today",
  );
  fillTable(
    "excess-events",
    c.excess_events.map((e) => ({
      key: e.at,
      cells: [timeCell(e.at), { text: kw(e.kwh), cls: "num alarm" }, { text: kw(e.limit_kw), cls: "num" }, { text: e.reason, cls: "wrap" }],
    })),
    "No excess this month",
  );
  fillTable(
    "unapproved-pools",
    c.unapproved_pools.map((p) => ({
      key: p.miner_id,
      cells: [p.miner_id, { text: p.unapproved.join(", "), cls: "alarm wrap" }, p.action, timeCell(p.since)],
    })),
    "Every miner is on an approved pool",
  );
  showChain(c.chain);
}

function showChain(chain) {
  const node = $("chain");
  const rows = `${countFormat.format(chain.rows)} rows`;
  const head = chain.head ? `, head ${chain.head.slice(0, 16)}…` : "";
  const checked = chain.checked_at ? ` (checked ${when(chain.checked_at)})` : "";
  node.title = chain.head || "";
  if (chain.verified === true) {
    node.dataset.state = "verified";
    node.textContent = `Chain verified: ${rows}${head}${checked}`;
  } else if (chain.verified === false) {
    node.dataset.state = "broken";
    node.textContent = `CHAIN NOT VERIFIED: ${chain.problem || "a row does not match its hash"}${checked}`;
  } else {
    node.dataset.state = "unchecked";
    node.textContent = `Chain not yet checked: ${rows}${head}`;
  }
}

// Set by the pools check: true (approved), false (with the URLs), null until first checked.
function minerPools(m) {
  if (m.pools_ok === true) return { text: "ok", cls: "ok" };
  if (m.pools_ok === false) {
    const urls = ((m.pools && m.pools.unapproved) || []).join(", ");
    return { text: `unapproved: ${urls}`, cls: "alarm wrap" };
  }
  return "—";
}
