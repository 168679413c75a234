-- Issue 13: the result cache (ResultCache, freight/store/common/cache.py), and on each batch whether it
-- uses the cache (cache: false on create), its answers from the cache and the tokens they saved.
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
ALTER TABLE batches ADD COLUMN use_cache INTEGER NOT NULL DEFAULT 1;
ALTER TABLE batches ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN saved_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN saved_output_tokens INTEGER NOT NULL DEFAULT 0;
