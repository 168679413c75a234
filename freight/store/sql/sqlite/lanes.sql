-- Batch lanes (freight/store/common/lanes.py): upstream batches ("subs") and the requests each holds.

-- name: lane_unassigned
SELECT r.idx, r.body,
    (SELECT count(*) FROM lane_items li WHERE li.batch_id = r.batch_id AND li.idx = r.idx) AS held
FROM requests r
WHERE r.batch_id = :batch_id AND r.state = {request.pending} AND r.idx > :after_idx
  AND NOT EXISTS (SELECT 1 FROM lane_items li JOIN lane_subs s ON s.id = li.sub_id
                  WHERE li.batch_id = r.batch_id AND li.idx = r.idx AND s.state <> {sub.done})
ORDER BY r.idx LIMIT :limit;

-- name: insert_lane_sub
INSERT INTO lane_subs ({cols.lane_sub})
VALUES (:id, :batch_id, :round, :state, :requests, :bytes, :created_at, :upload_id, :upstream_id, :create_sent_at,
        :upstream_status, :completed, :failed, :cancel_sent);

-- name: insert_lane_item
INSERT INTO lane_items (batch_id, idx, sub_id) VALUES (:batch_id, :idx, :sub_id);

-- name: live_lane_subs
SELECT {cols.lane_sub} FROM lane_subs WHERE batch_id = :batch_id AND state <> {sub.done} ORDER BY created_at, id;

-- name: lane_subs
SELECT {cols.lane_sub} FROM lane_subs WHERE batch_id = :batch_id ORDER BY created_at, id;

-- name: lane_bodies
SELECT r.idx, r.body FROM lane_items li JOIN requests r ON r.batch_id = li.batch_id AND r.idx = li.idx
WHERE li.sub_id = :sub_id AND li.idx > :after_idx ORDER BY li.idx LIMIT :limit;

-- name: lane_items
SELECT idx FROM lane_items WHERE sub_id = :sub_id ORDER BY idx;

-- name: lane_sub_for_update
SELECT {cols.lane_sub} FROM lane_subs WHERE id = :id;

-- name: update_lane_sub
UPDATE lane_subs SET state = :state, upload_id = :upload_id, upstream_id = :upstream_id,
    create_sent_at = :create_sent_at, upstream_status = :upstream_status, completed = :completed, failed = :failed,
    cancel_sent = :cancel_sent
WHERE id = :id;

-- name: lane_open_items
SELECT r.idx FROM lane_items li JOIN requests r ON r.batch_id = li.batch_id AND r.idx = li.idx
WHERE li.sub_id = :sub_id AND r.state < {request.done};

-- name: lane_store_result
UPDATE requests SET state = {request.done}, status_code = :status_code, response_body = :response_body,
    request_id = :request_id, error_code = :error_code, error_message = :error_message,
    input_tokens = :input_tokens, output_tokens = :output_tokens, attempts = attempts + 1, attempt_id = NULL,
    lease_owner = NULL, lease_until = NULL
WHERE batch_id = :batch_id AND idx = :idx AND state < {request.done};

-- name: lane_sub_done
UPDATE lane_subs SET state = {sub.done} WHERE id = :id;

-- name: lane_progress
SELECT batch_id, sum(completed) AS ok, sum(failed) AS bad FROM lane_subs
WHERE batch_id IN (SELECT value FROM json_each(:batch_ids)) AND state = {sub.running}
GROUP BY batch_id;
