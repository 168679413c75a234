-- The reference SQLite schema: what freight's code expects, and what migrations 0001..N build
-- together (tests/contract/test_migrations.py checks it). Change it with a new numbered migration.
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    status TEXT NOT NULL,
    status_details TEXT,
    blob_key TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    lines INTEGER,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS files_by_project ON files(project, deleted, created_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS files_by_idempotency_key ON files(project, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    model TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    output_expires_after_s INTEGER,
    idempotency_key TEXT,
    max_cost_usd REAL,
    output_schema TEXT,
    invalid_outputs INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    paused_at INTEGER,
    use_cache INTEGER NOT NULL DEFAULT 1,
    cached INTEGER NOT NULL DEFAULT 0,
    saved_input_tokens INTEGER NOT NULL DEFAULT 0,
    saved_output_tokens INTEGER NOT NULL DEFAULT 0,
    schedule TEXT,
    not_before INTEGER,
    UNIQUE (project, idempotency_key)
);
CREATE INDEX IF NOT EXISTS batches_by_project ON batches(project, seq);
CREATE INDEX IF NOT EXISTS batches_active ON batches(status) WHERE status NOT IN ('failed', 'completed', 'expired', 'cancelled');

CREATE TABLE IF NOT EXISTS requests (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    attempt_id TEXT,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    status_code INTEGER,
    response_body BLOB,
    request_id TEXT,
    error_code TEXT,
    error_message TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_open ON requests(batch_id, state, idx) WHERE state < 2;

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Anthropic Message Batches (freight/domain/message_batches.py): the batches created through
-- /v1/messages/batches, how many requests each had, and how they came out once it ended.
CREATE TABLE IF NOT EXISTS message_batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    requests INTEGER NOT NULL,
    succeeded INTEGER,
    errored INTEGER,
    canceled INTEGER,
    expired INTEGER
);
CREATE INDEX IF NOT EXISTS message_batches_by_project ON message_batches(project, seq);

-- Batch lanes (freight/domain/lanes.py, freight/engine/lanes.py): every upstream batch a lane
-- made or may have made for a freight batch ("sub"), recorded before each step, and which requests
-- each sub holds.
CREATE TABLE IF NOT EXISTS lane_subs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL,
    requests INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    upload_id TEXT,
    upstream_id TEXT,
    create_sent_at REAL,
    upstream_status TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancel_sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS lane_subs_by_batch ON lane_subs(batch_id, state);

CREATE TABLE IF NOT EXISTS lane_items (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sub_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, idx, sub_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lane_items_by_sub ON lane_items(sub_id, idx);

CREATE TABLE IF NOT EXISTS step_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);

-- Batch events (the outbox) and webhook endpoints with their deliveries (freight/ports/events.py).
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

-- Failures in a row of a batch's step (StepPolicy), kept for the next holder of the batch-steps lease.
CREATE TABLE IF NOT EXISTS step_failures (
    batch_id TEXT PRIMARY KEY,
    failures INTEGER NOT NULL
);

-- Scheduling (migration 0006): model time used per project and minute bucket (the fair share).
CREATE TABLE IF NOT EXISTS project_usage (
    project TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (project, bucket)
);
CREATE TABLE IF NOT EXISTS intake_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT,
    reply_to TEXT,
    correlation_id TEXT,
    received_at REAL NOT NULL,
    deadline REAL,
    result TEXT,
    flush_id TEXT,
    batch_id TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, message_id)
);
CREATE INDEX IF NOT EXISTS intake_by_flush ON intake_messages(flush_id);
CREATE INDEX IF NOT EXISTS intake_undelivered ON intake_messages(source, delivered);
CREATE TABLE IF NOT EXISTS result_cache (
    key TEXT PRIMARY KEY,
    status_code INTEGER NOT NULL,
    body BLOB NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS result_cache_by_age ON result_cache(created_at);
