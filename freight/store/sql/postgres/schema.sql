-- The reference PostgreSQL schema: what freight's code expects, and what migrations 0001..N build
-- together (tests/contract/test_migrations.py checks it). Change it with a new numbered migration.
CREATE TABLE files (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    status TEXT NOT NULL,
    status_details TEXT,
    blob_key TEXT NOT NULL,
    deleted SMALLINT NOT NULL DEFAULT 0,
    lines BIGINT,
    idempotency_key TEXT
);
CREATE INDEX files_by_project ON files(project, deleted, seq);
CREATE UNIQUE INDEX files_by_idempotency_key ON files(project, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE batches (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    in_progress_at BIGINT,
    finalizing_at BIGINT,
    completed_at BIGINT,
    failed_at BIGINT,
    expired_at BIGINT,
    cancelling_at BIGINT,
    cancelled_at BIGINT,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    model TEXT,
    total BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    output_expires_after_s BIGINT,
    idempotency_key TEXT,
    max_cost_usd DOUBLE PRECISION,
    output_schema TEXT,
    invalid_outputs BIGINT NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    paused_at BIGINT,
    use_cache BIGINT NOT NULL DEFAULT 1,
    cached BIGINT NOT NULL DEFAULT 0,
    saved_input_tokens BIGINT NOT NULL DEFAULT 0,
    saved_output_tokens BIGINT NOT NULL DEFAULT 0,
    schedule TEXT,
    not_before BIGINT,
    UNIQUE (project, idempotency_key)
);
CREATE INDEX batches_by_project ON batches(project, seq);
CREATE INDEX batches_active ON batches(status) WHERE status NOT IN ('failed', 'completed', 'expired', 'cancelled');
CREATE INDEX batches_by_input_file ON batches(input_file_id);

CREATE TABLE requests (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body BYTEA NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempt_id TEXT,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    last_error TEXT,
    status_code INTEGER,
    response_body BYTEA,
    request_id TEXT,
    error_code TEXT,
    error_message TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, idx)
);
CREATE INDEX requests_open ON requests(batch_id, state, idx) WHERE state < 2;
CREATE INDEX requests_running ON requests(lease_owner) WHERE state = 1;

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE message_batches (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    requests BIGINT NOT NULL,
    succeeded BIGINT,
    errored BIGINT,
    canceled BIGINT,
    expired BIGINT
);
CREATE INDEX message_batches_by_project ON message_batches(project, seq);

CREATE TABLE lane_subs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL,
    requests INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    upload_id TEXT,
    upstream_id TEXT,
    create_sent_at DOUBLE PRECISION,
    upstream_status TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancel_sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX lane_subs_by_batch ON lane_subs(batch_id, state);

CREATE TABLE lane_items (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sub_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, idx, sub_id)
);
CREATE INDEX lane_items_by_sub ON lane_items(sub_id, idx);

CREATE TABLE IF NOT EXISTS step_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

-- Batch events (the outbox) and webhook endpoints with their deliveries (freight/ports/events.py).
CREATE TABLE IF NOT EXISTS batch_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    project TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_events_by_project ON batch_events(project, seq);

CREATE TABLE IF NOT EXISTS webhook_endpoints (
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
CREATE INDEX IF NOT EXISTS webhook_endpoints_by_project ON webhook_endpoints(project, deleted, seq);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
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
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(next_at) WHERE state = 0;

CREATE TABLE IF NOT EXISTS event_cursors (
    name TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
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
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (project, bucket)
);
CREATE TABLE IF NOT EXISTS intake_messages (
    seq BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT,
    reply_to TEXT,
    correlation_id TEXT,
    received_at DOUBLE PRECISION NOT NULL,
    deadline DOUBLE PRECISION,
    result TEXT,
    flush_id TEXT,
    batch_id TEXT,
    delivered BIGINT NOT NULL DEFAULT 0,
    UNIQUE (source, message_id)
);
CREATE INDEX IF NOT EXISTS intake_by_flush ON intake_messages(flush_id);
CREATE INDEX IF NOT EXISTS intake_undelivered ON intake_messages(source, delivered);
CREATE TABLE IF NOT EXISTS result_cache (
    key TEXT PRIMARY KEY,
    status_code INTEGER NOT NULL,
    body BYTEA NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS result_cache_by_age ON result_cache(created_at);
