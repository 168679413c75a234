-- The result cache (freight/store/common/cache.py): answers kept by their request's canonical key.

-- name: get_cached
SELECT key, status_code, body, input_tokens, output_tokens FROM result_cache
WHERE key = ANY(:keys) AND expires_at > :now;

-- name: put_cached
-- Many entries in one statement (``Tx.bulk``: each parameter is an array of the rows' values; keys distinct).
INSERT INTO result_cache (key, status_code, body, input_tokens, output_tokens, bytes, created_at, expires_at)
SELECT * FROM unnest(CAST(:key AS text[]), CAST(:status_code AS integer[]), CAST(:body AS bytea[]),
                     CAST(:input_tokens AS bigint[]), CAST(:output_tokens AS bigint[]),
                     CAST(:bytes AS bigint[]), CAST(:now AS double precision[]),
                     CAST(:expires_at AS double precision[]))
ON CONFLICT (key) DO UPDATE SET status_code = excluded.status_code, body = excluded.body,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, bytes = excluded.bytes,
    created_at = excluded.created_at, expires_at = excluded.expires_at;

-- name: evict_expired
DELETE FROM result_cache WHERE expires_at <= :now;

-- name: cache_bytes
SELECT COALESCE(SUM(bytes), 0) AS total FROM result_cache;

-- name: cache_oldest
-- The oldest entries first (the ones dropped to fit the size cap).
SELECT key, bytes FROM result_cache ORDER BY created_at, key LIMIT :limit;

-- name: delete_cached
DELETE FROM result_cache WHERE key = :key;
