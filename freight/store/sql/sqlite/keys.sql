-- API keys (freight/store/common/keys.py): only the sha256 of each secret.

-- name: insert_api_key
INSERT INTO api_keys (id, project, secret_hash, created_at) VALUES (:id, :project, :secret_hash, :created_at);

-- name: api_key
SELECT id, project, secret_hash, created_at, revoked_at FROM api_keys WHERE id = :id;

-- name: list_api_keys
SELECT id, project, created_at, revoked_at FROM api_keys ORDER BY created_at, id;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = :at WHERE id = :id AND revoked_at IS NULL;

-- name: any_live_api_key
SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1;
