-- Batch events (an outbox: one row per status change, written in the transaction that makes it)
-- and webhook endpoints with their durable deliveries (freight/ports/events.py).
CREATE TABLE IF NOT EXISTS batch_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    project TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_events_by_project ON batch_events(project, seq);

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    secret TEXT NOT NULL,
    old_secret TEXT,
    old_secret_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_by_project ON webhook_endpoints(project, deleted, seq);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq INTEGER NOT NULL,
    endpoint_id TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    done_at REAL,
    UNIQUE (event_seq, endpoint_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(next_at) WHERE state = 0;

CREATE TABLE IF NOT EXISTS event_cursors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
