-- The request queue (freight/store/common/queue.py). ``state`` is a RequestState; a running
-- request's result is stored only under the attempt id that holds its claim (fencing).
-- SQLite: every write runs under BEGIN IMMEDIATE, so a claim's select and updates are atomic.

-- name: claim_candidates
-- (Every claim statement returns these seven columns in this order: common/queue.py reads them by position.)
-- Pending requests first, then running ones whose lease ran out, each in input order: the order of
-- the open-requests index (batch_id, state, idx), so a claim reads only what it takes and never
-- walks past the batch's finished requests (ORDER BY idx alone did: a claim cost grew with the batch).
SELECT r.batch_id, r.idx, r.state, r.attempts, r.attempt_id, r.custom_id, r.body
FROM requests r
WHERE r.batch_id = :batch_id AND r.state < {request.done}
  AND ((r.state = {request.pending} AND r.not_before <= :now) OR (r.state = {request.running} AND r.lease_until < :now))
  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = :batch_id AND b.status = {batch.in_progress})
ORDER BY r.state, r.idx LIMIT :limit;

-- name: claim_candidates_any
SELECT r.batch_id, r.idx, r.state, r.attempts, r.attempt_id, r.custom_id, r.body
FROM batches b JOIN requests r ON r.batch_id = b.id
WHERE b.status = {batch.in_progress} AND b.model IN (SELECT value FROM json_each(:models))
  AND r.state < {request.done}
  AND ((r.state = {request.pending} AND r.not_before <= :now) OR (r.state = {request.running} AND r.lease_until < :now))
ORDER BY b.seq, r.state, r.idx LIMIT :limit;

-- name: claim_candidates_in
-- Across the batches named in :batches (a JSON array), in that order (the scheduling policy's,
-- engine/turns.py), each batch's requests in the order of claim_candidates, :limit in all, in one
-- statement. No ORDER BY on purpose: the CROSS JOIN makes the array the outer loop and INDEXED BY walks
-- each batch's open requests in (state, idx) order, so the rows come out in the wanted order and the
-- LIMIT stops the walk (an ORDER BY would sort every open request of every batch first). (:from_idx,
-- where PostgreSQL starts reading each batch's pending requests, is not used: SQLite updates rows in
-- place and leaves no dead index entries for a claim to walk past.)
SELECT r.batch_id, r.idx, r.state, r.attempts, r.attempt_id, r.custom_id, r.body
FROM json_each(:batches) o CROSS JOIN requests r INDEXED BY requests_open
WHERE r.batch_id = o.value AND r.state < {request.done}
  AND ((r.state = {request.pending} AND r.not_before <= :now) OR (r.state = {request.running} AND r.lease_until < :now))
  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = o.value AND b.status = {batch.in_progress}
              AND b.model IN (SELECT value FROM json_each(:models)))
LIMIT :limit;

-- name: lease
-- Every lease of one batch's claimed requests in one statement: :idxs is a JSON array of their idx;
-- each attempt id is the claim's random :stem, a dot and the request's idx (common/queue.py).
UPDATE requests SET state = {request.running}, attempts = attempts + 1, attempt_id = :stem || '.' || idx,
    lease_owner = :owner, lease_until = :until
WHERE batch_id = :batch_id AND idx IN (SELECT value FROM json_each(:idxs));

-- name: close_lost
UPDATE requests SET state = {request.done}, attempt_id = NULL, lease_owner = NULL, lease_until = NULL,
    status_code = :status_code, response_body = :response_body, request_id = :request_id, error_code = :error_code,
    error_message = :error_message
WHERE batch_id = :batch_id AND idx = :idx AND state = {request.running} AND attempt_id = :attempt_id;

-- name: renew
-- By primary key: (batch_id, idx), then the attempt id that must still hold the claim (``Tx.bulk``).
UPDATE requests SET lease_until = :until
WHERE batch_id = :batch_id AND idx = :idx AND attempt_id = :attempt_id AND state = {request.running};

-- name: complete
UPDATE requests SET state = {request.done}, status_code = :status_code, response_body = :response_body,
    request_id = :request_id, error_code = :error_code, error_message = :error_message,
    input_tokens = :input_tokens, output_tokens = :output_tokens, attempt_id = NULL, lease_owner = NULL,
    lease_until = NULL
WHERE batch_id = :batch_id AND idx = :idx AND attempt_id = :attempt_id AND state = {request.running};

-- name: complete_all
-- The same, for ``Tx.bulk`` (an executemany here).
UPDATE requests SET state = {request.done}, status_code = :status_code, response_body = :response_body,
    request_id = :request_id, error_code = :error_code, error_message = :error_message,
    input_tokens = :input_tokens, output_tokens = :output_tokens, attempt_id = NULL, lease_owner = NULL,
    lease_until = NULL
WHERE batch_id = :batch_id AND idx = :idx AND attempt_id = :attempt_id AND state = {request.running};

-- name: retry_later
UPDATE requests SET state = {request.pending}, not_before = :not_before, last_error = :last_error,
    attempt_id = NULL, lease_owner = NULL, lease_until = NULL, attempts = attempts - :refund
WHERE batch_id = :batch_id AND idx = :idx AND attempt_id = :attempt_id AND state = {request.running};

-- name: close_pending
UPDATE requests SET state = {request.done}, status_code = :status_code, response_body = :response_body,
    request_id = :request_id, error_code = :error_code, error_message = :error_message, attempt_id = NULL,
    lease_owner = NULL, lease_until = NULL
WHERE batch_id = :batch_id AND state = {request.pending};

-- name: close_open
UPDATE requests SET state = {request.done}, status_code = :status_code, response_body = :response_body,
    request_id = :request_id, error_code = :error_code, error_message = :error_message, attempt_id = NULL,
    lease_owner = NULL, lease_until = NULL
WHERE batch_id = :batch_id AND state < {request.done};

-- name: open_counts
SELECT state, count(*) AS n FROM requests
WHERE batch_id = :batch_id AND state < {request.done} GROUP BY state;

-- name: release_all_leases
-- Only a batch that has not ended can have running requests (one ends once it has none, or closes them,
-- engine/engine.py), so they are found through requests_open in the batches not ended: the cost is their
-- open requests, not every request the data dir ever held (a plain ``WHERE state = running`` read the
-- whole table at every start and stop). PostgreSQL has an index of running requests instead.
UPDATE requests SET state = {request.pending}, attempt_id = NULL, lease_owner = NULL, lease_until = NULL
WHERE batch_id IN (SELECT id FROM batches WHERE status NOT IN {batch.terminal})
  AND state < {request.done} AND state = {request.running};

-- name: release_leases_of
-- (Found as release_all_leases finds them.)
UPDATE requests SET state = {request.pending}, attempt_id = NULL, lease_owner = NULL, lease_until = NULL
WHERE batch_id IN (SELECT id FROM batches WHERE status NOT IN {batch.terminal})
  AND state < {request.done} AND state = {request.running} AND lease_owner = :owner;
