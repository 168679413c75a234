-- Anthropic Message Batches (freight/store/common/message_batches.py): a row beside each batch.

-- name: insert_message_batch
INSERT INTO message_batches (batch_id, project, requests) VALUES (:batch_id, :project, :requests);

-- name: is_message_batch
-- (joined: a deleted batch's row stays as its place in the list, see delete_message_batch in store/common)
SELECT 1 FROM message_batches m JOIN batches b ON b.id = m.batch_id WHERE m.batch_id = :batch_id;

-- name: message_batch
SELECT {cols.b_batch}, m.requests AS m_requests,
    m.succeeded AS m_succeeded, m.errored AS m_errored, m.canceled AS m_canceled, m.expired AS m_expired
FROM message_batches m JOIN batches b ON b.id = m.batch_id
WHERE m.batch_id = :batch_id AND m.project = :project;

-- name: message_batch_seq
SELECT seq FROM message_batches WHERE batch_id = :batch_id AND project = :project;

-- name: list_message_batches
SELECT {cols.b_batch}, m.requests AS m_requests,
    m.succeeded AS m_succeeded, m.errored AS m_errored, m.canceled AS m_canceled, m.expired AS m_expired
FROM message_batches m JOIN batches b ON b.id = m.batch_id
WHERE m.project = :project AND (CAST(:seq AS BIGINT) IS NULL OR m.seq < :seq)
ORDER BY m.seq DESC LIMIT :limit;

-- name: list_message_batches_newer
SELECT {cols.b_batch}, m.requests AS m_requests,
    m.succeeded AS m_succeeded, m.errored AS m_errored, m.canceled AS m_canceled, m.expired AS m_expired
FROM message_batches m JOIN batches b ON b.id = m.batch_id
WHERE m.project = :project AND m.seq > :seq
ORDER BY m.seq ASC LIMIT :limit;

-- name: message_batch_state
SELECT b.status, m.succeeded, m.errored, m.canceled, m.expired
FROM message_batches m JOIN batches b ON b.id = m.batch_id WHERE m.batch_id = :batch_id
FOR UPDATE OF m;

-- name: result_groups
SELECT status_code, error_code, count(*) AS n FROM requests
WHERE batch_id = :batch_id AND state = {request.done} GROUP BY status_code, error_code;

-- name: settle_message_batch
UPDATE message_batches SET succeeded = :succeeded, errored = :errored, canceled = :canceled, expired = :expired
WHERE batch_id = :batch_id;

-- name: message_batch_files
SELECT b.status, b.input_file_id, b.output_file_id, b.error_file_id
FROM message_batches m JOIN batches b ON b.id = m.batch_id
WHERE m.batch_id = :batch_id AND m.project = :project;

