-- Batch events (an outbox: one row per status change, written in the transaction that makes it)
-- and webhook endpoints with their durable deliveries (freight/ports/events.py).
CREATE TABLE batch_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    project TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX batch_events_by_project ON batch_events(project, seq);

CREATE TABLE webhook_endpoints (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    secret TEXT NOT NULL,
    old_secret TEXT,
    old_secret_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_endpoints_by_project ON webhook_endpoints(project, deleted, seq);

CREATE TABLE webhook_deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq BIGINT NOT NULL,
    endpoint_id TEXT NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_status BIGINT,
    last_error TEXT,
    done_at DOUBLE PRECISION,
    UNIQUE (event_seq, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_at) WHERE state = 0;

CREATE TABLE event_cursors (
    name TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);
