"""The journal's tables. Evidence tables carry chain_seq and chain_hash (record/chain.py);
state tables (held, revisions, obligations, operator, ladder, site_state) do not."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signals (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, transport TEXT NOT NULL, source TEXT,
    signal_id TEXT, revision INTEGER, kind TEXT, verdict TEXT NOT NULL, detail TEXT,
    body TEXT, chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS revisions (
    signal_id TEXT PRIMARY KEY, revision INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    signal_id TEXT PRIMARY KEY, signal TEXT NOT NULL, source TEXT NOT NULL,
    received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, cause TEXT NOT NULL, limit_w INTEGER NOT NULL,
    reasons TEXT NOT NULL, budget_w INTEGER NOT NULL, expected_w INTEGER NOT NULL,
    feasible INTEGER NOT NULL, notes TEXT NOT NULL, action_count INTEGER NOT NULL,
    actions BLOB NOT NULL, chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY, decision_seq INTEGER, miner_id TEXT NOT NULL,
    action TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT, chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS obligations (
    key TEXT PRIMARY KEY, signal_id TEXT NOT NULL, revision INTEGER NOT NULL,
    kind TEXT NOT NULL, limit_w INTEGER NOT NULL, starts_at TEXT NOT NULL,
    due_at TEXT NOT NULL, status TEXT NOT NULL, reached_at TEXT, measured_w INTEGER,
    measured_by TEXT);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT,
    detail TEXT, chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS obligation_log (
    seq INTEGER PRIMARY KEY, key TEXT NOT NULL, signal_id TEXT NOT NULL,
    revision INTEGER NOT NULL, kind TEXT NOT NULL, limit_w INTEGER NOT NULL,
    starts_at TEXT NOT NULL, due_at TEXT NOT NULL, status TEXT NOT NULL, reached_at TEXT,
    measured_w INTEGER, measured_by TEXT, chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS operator (key TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ladder (miner_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS site_state (key TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS energy_intervals (
    seq INTEGER PRIMARY KEY, start TEXT NOT NULL, end TEXT NOT NULL, grid_kwh REAL NOT NULL,
    within_grants_kwh REAL NOT NULL, base_allowance_kwh REAL NOT NULL,
    excess_kwh REAL NOT NULL, exempt_generation_kwh REAL NOT NULL, allowed_kwh REAL NOT NULL,
    granted_kwh REAL NOT NULL, gap_s REAL NOT NULL, estimated_s REAL NOT NULL,
    measured_by TEXT NOT NULL, chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS energy_grants (
    seq INTEGER PRIMARY KEY, start TEXT NOT NULL, grant_id TEXT NOT NULL,
    used_kwh REAL NOT NULL, granted_kwh REAL NOT NULL, excess_kwh REAL NOT NULL,
    chain_seq INTEGER, chain_hash TEXT);
CREATE TABLE IF NOT EXISTS energy_curtailments (
    seq INTEGER PRIMARY KEY, start TEXT NOT NULL, signal_id TEXT NOT NULL,
    revision INTEGER NOT NULL, limit_w INTEGER NOT NULL, excess_kwh REAL NOT NULL,
    chain_seq INTEGER, chain_hash TEXT);
CREATE INDEX IF NOT EXISTS energy_intervals_start ON energy_intervals (start);
CREATE INDEX IF NOT EXISTS energy_grants_start ON energy_grants (start);
CREATE INDEX IF NOT EXISTS energy_curtailments_start ON energy_curtailments (start);
CREATE INDEX IF NOT EXISTS commands_decision ON commands (decision_seq);
CREATE INDEX IF NOT EXISTS signals_at ON signals (at);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
"""
