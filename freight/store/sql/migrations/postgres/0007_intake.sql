-- Issue 14: queue intake. Every message taken from an [intake."name"] source, deduplicated on
-- (source, message_id), until its result is delivered.
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
