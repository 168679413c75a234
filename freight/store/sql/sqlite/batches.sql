-- Batches (freight/store/common/batches.py). Status changes are compare-and-set: the new status
-- and every *_at column come from freight.domain.status_changes, written where status = :expected.

-- name: insert_batch
INSERT INTO batches (id, project, endpoint, input_file_id, completion_window, status, created_at, expires_at,
                     metadata, output_expires_after_s, idempotency_key, max_cost_usd, output_schema, priority,
                     use_cache, schedule, not_before)
VALUES (:id, :project, :endpoint, :input_file_id, :completion_window, :status, :created_at, :expires_at,
        :metadata, :output_expires_after_s, :idempotency_key, :max_cost_usd, :output_schema, :priority, :use_cache,
        :schedule, :not_before)
ON CONFLICT (project, idempotency_key) DO NOTHING;

-- name: notify_work
-- A hint to other processes that work may have changed (sent at commit; PostgreSQL only).
SELECT 1;

-- name: lock_project
SELECT 1;

-- name: project_active_batches
-- What the project's quota counts (freight.domain.quota).
SELECT b.total, b.completed, b.failed, f.lines
FROM batches b LEFT JOIN files f ON f.id = b.input_file_id
WHERE b.project = :project AND b.status NOT IN {batch.terminal};

-- name: batch
SELECT {cols.batch} FROM batches WHERE id = :id;

-- name: batch_in_project
SELECT {cols.batch} FROM batches WHERE id = :id AND project = :project;

-- name: batch_by_idempotency_key
SELECT {cols.batch} FROM batches WHERE project = :project AND idempotency_key = :idempotency_key;

-- name: batch_seq
SELECT seq FROM batches WHERE id = :id AND project = :project;

-- name: list_batches
SELECT {cols.batch} FROM batches
WHERE project = :project AND (:after_seq IS NULL OR seq < :after_seq)
  AND id NOT IN (SELECT batch_id FROM message_batches)
ORDER BY seq DESC LIMIT :limit;

-- name: active_batches
SELECT {cols.batch} FROM batches WHERE status NOT IN {batch.terminal} ORDER BY seq;

-- name: set_status
UPDATE batches SET status = :status, in_progress_at = :in_progress_at, finalizing_at = :finalizing_at,
    completed_at = :completed_at, failed_at = :failed_at, expired_at = :expired_at, cancelling_at = :cancelling_at,
    cancelled_at = :cancelled_at
WHERE id = :id AND status = :expected;

-- name: start_batch
UPDATE batches SET total = :total, model = :model, status = :status, in_progress_at = :in_progress_at
WHERE id = :id AND status = :expected;

-- name: fail_validation
UPDATE batches SET errors = :errors, status = :status, failed_at = :failed_at
WHERE id = :id AND status = :expected;

-- name: finish_batch
UPDATE batches SET status = :status, in_progress_at = :in_progress_at, finalizing_at = :finalizing_at,
    completed_at = :completed_at, failed_at = :failed_at, expired_at = :expired_at, cancelling_at = :cancelling_at,
    cancelled_at = :cancelled_at, output_file_id = :output_file_id, error_file_id = :error_file_id
WHERE id = :id AND status = :expected;

-- name: reset_counts
UPDATE batches SET completed = 0, failed = 0, input_tokens = 0, output_tokens = 0, cached = 0,
    saved_input_tokens = 0, saved_output_tokens = 0
WHERE id = :id AND status = :expected;

-- name: add_counts
UPDATE batches SET completed = completed + :completed, failed = failed + :failed,
    input_tokens = input_tokens + :input_tokens, output_tokens = output_tokens + :output_tokens,
    invalid_outputs = invalid_outputs + :invalid_outputs, cached = cached + :cached,
    saved_input_tokens = saved_input_tokens + :saved_input_tokens,
    saved_output_tokens = saved_output_tokens + :saved_output_tokens
WHERE id = :id;

-- name: delete_batch
DELETE FROM batches WHERE id = :id;

-- name: delete_requests
DELETE FROM requests WHERE batch_id = :batch_id;

-- name: insert_requests
-- Many requests (``Tx.bulk``: an executemany here).
INSERT INTO requests (batch_id, idx, line, custom_id, body) VALUES (:batch_id, :idx, :line, :custom_id, :body);

-- name: refresh_stats
-- After a big ingest (common/batches.py start_batch), and when a big batch starts finalizing (set_status).
PRAGMA optimize;

-- name: insert_finished_request
INSERT INTO requests (batch_id, idx, line, custom_id, body, state, status_code, response_body, request_id,
                      error_code, error_message)
VALUES (:batch_id, :idx, :line, :custom_id, :body, {request.done}, :status_code, :response_body, :request_id,
        :error_code, :error_message);

-- name: any_open_request
SELECT 1 FROM requests WHERE batch_id = :batch_id AND state < {request.done} LIMIT 1;

-- name: results
-- (results and failed_results return these columns in this order: common/rows.py stored_results reads them by position.)
SELECT idx, custom_id, status_code, response_body, request_id, error_code, error_message, input_tokens, output_tokens
FROM requests WHERE batch_id = :batch_id AND idx > :after_idx AND state = {request.done}
ORDER BY idx LIMIT :limit;

-- name: failed_results
-- The dashboard's failures by code: finished requests without a 2xx answer (status_code is read
-- before the response body, so a scan past successful rows stays cheap).
SELECT idx, custom_id, status_code, response_body, request_id, error_code, error_message, input_tokens, output_tokens
FROM requests WHERE batch_id = :batch_id AND idx > :after_idx AND state = {request.done}
  AND (status_code IS NULL OR status_code < 200 OR status_code > 299)
ORDER BY idx LIMIT :limit;

-- name: lock_batch
-- Ingest: a stale step (its process lost the batch-steps lease) and the new holder's may overlap;
-- clearing and starting a batch's requests take the batch row's lock first.
SELECT id FROM batches WHERE id = :id;

-- name: count_batch_requests
SELECT count(*) AS n FROM requests WHERE batch_id = :batch_id;
