-- Files' metadata (freight/store/common/files.py). ``deleted`` is a FileRowState.

-- name: insert_file
INSERT INTO files (id, project, filename, purpose, bytes, created_at, expires_at, status, status_details, blob_key,
                   lines, idempotency_key)
VALUES (:id, :project, :filename, :purpose, :bytes, :created_at, :expires_at, :status, :status_details, :blob_key,
        :lines, :idempotency_key)
ON CONFLICT (project, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;

-- name: file_by_idempotency_key
SELECT {cols.file} FROM files WHERE project = :project AND idempotency_key = :idempotency_key;

-- name: live_file
SELECT {cols.file} FROM files WHERE id = :id AND project = :project AND deleted = {file.live};

-- name: file_blob_key
SELECT blob_key FROM files WHERE id = :id AND deleted <> {file.purged};

-- name: file_seq
SELECT rowid AS seq FROM files WHERE id = :id AND project = :project;

-- name: list_files_asc
SELECT {cols.file} FROM files
WHERE project = :project AND deleted = {file.live} AND (:purpose IS NULL OR purpose = :purpose)
  AND (:after_seq IS NULL OR rowid > :after_seq)
ORDER BY rowid ASC LIMIT :limit;

-- name: list_files_desc
SELECT {cols.file} FROM files
WHERE project = :project AND deleted = {file.live} AND (:purpose IS NULL OR purpose = :purpose)
  AND (:after_seq IS NULL OR rowid < :after_seq)
ORDER BY rowid DESC LIMIT :limit;

-- name: delete_file
UPDATE files SET deleted = {file.deleted} WHERE id = :id AND project = :project AND deleted = {file.live};

-- name: delete_file_of_batch
UPDATE files SET deleted = {file.deleted} WHERE id = :id AND deleted = {file.live};

-- name: purgeable_files
SELECT f.id, f.blob_key FROM files f
WHERE (f.deleted = {file.deleted}
       OR (f.deleted = {file.live} AND f.expires_at IS NOT NULL AND f.expires_at <= :now))
  AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id = f.id AND b.status NOT IN {batch.terminal})
LIMIT :limit;

-- name: mark_purged
UPDATE files SET deleted = {file.purged} WHERE id = :id;

-- name: blob_keys
SELECT blob_key FROM files WHERE deleted <> {file.purged};
