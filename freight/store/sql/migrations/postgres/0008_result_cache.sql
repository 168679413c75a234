-- Issue 13: the result cache (ResultCache, freight/store/common/cache.py), and on each batch whether it
-- uses the cache (cache: false on create), its answers from the cache and the tokens they saved.
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
ALTER TABLE batches ADD COLUMN IF NOT EXISTS use_cache BIGINT NOT NULL DEFAULT 1;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS cached BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS saved_input_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS saved_output_tokens BIGINT NOT NULL DEFAULT 0;
