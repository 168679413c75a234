-- The request queue (freight/store/common/queue.py). ``state`` is a RequestState; a running
-- request's result is stored only under the attempt id that holds its claim (fencing).
-- PostgreSQL: candidates are locked FOR UPDATE SKIP LOCKED, so concurrent claimers never take the same
-- request and never wait on each other; the updates follow in the same (short) transaction.

-- name: claim_candidates
-- (Every claim statement returns these seven columns in this order: common/queue.py reads them by position.)
-- Pending requests first, then running ones whose lease ran out, each in input order: the order of
-- the open-requests index (batch_id, state, idx), so a claim reads only what it takes and never
-- walks past the batch's finished requests (ORDER BY idx alone did: a claim cost grew with the batch).
SELECT r.batch_id, r.idx, r.state, r.attempts, r.attempt_id, r.custom_id, r.body
FROM requests r
WHERE r.batch_id = :batch_id AND r.state < {request.done}
  -- (a CASE, not an OR of the two states: an OR makes the planner gather and sort every open request)
  AND CASE WHEN r.state = {request.pending} THEN r.not_before <= :now ELSE r.lease_until < :now END
  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = :batch_id AND b.status = {batch.in_progress})
ORDER BY r.state, r.idx LIMIT :limit
FOR UPDATE OF r SKIP LOCKED;

-- name: claim_candidates_any
SELECT r.batch_id, r.idx, r.state, r.attempts, r.attempt_id, r.custom_id, r.body
FROM batches b JOIN requests r ON r.batch_id = b.id
WHERE b.status = {batch.in_progress} AND b.model = ANY(:models)
  AND r.state < {request.done}
  AND CASE WHEN r.state = {request.pending} THEN r.not_before <= :now ELSE r.lease_until < :now END
ORDER BY b.seq, r.state, r.idx LIMIT :limit
FOR UPDATE OF r SKIP LOCKED;

-- name: claim_candidates_in
-- Across the batches named in :batches, in that order (the scheduling policy's, engine/turns.py), each
-- batch's requests in the order of claim_candidates, :limit in all: one statement, one round trip. The
-- array is the outer loop of a nested loop (LATERAL) and the outer LIMIT stops it as soon as it has
-- :limit rows, so later batches are not even read, and no row past those returned is locked.
-- :from_idx (one per batch, common/queue.py ClaimHints): the pending requests are read from that idx on
-- (the row comparison is a condition of the index scan: it starts there), the running ones all.
SELECT c.batch_id, c.idx, c.state, c.attempts, c.attempt_id, c.custom_id, c.body
FROM unnest(CAST(:batches AS text[]), CAST(:from_idx AS integer[])) WITH ORDINALITY AS o(id, from_idx, pos)
CROSS JOIN LATERAL (
    SELECT r.batch_id, r.idx, r.state, r.attempts, r.attempt_id, r.custom_id, r.body
    FROM requests r
    WHERE r.batch_id = o.id AND r.state < {request.done} AND (r.state, r.idx) >= ({request.pending}, o.from_idx)
      AND CASE WHEN r.state = {request.pending} THEN r.not_before <= :now ELSE r.lease_until < :now END
      AND EXISTS (SELECT 1 FROM batches b WHERE b.id = o.id AND b.status = {batch.in_progress}
                  AND b.model = ANY(:models))
    ORDER BY r.state, r.idx LIMIT :limit
    FOR UPDATE OF r SKIP LOCKED
) c
LIMIT :limit;

-- name: lease
-- Every lease of one batch's claimed requests in one statement: :idxs is an array of their idx;
-- each attempt id is the claim's random :stem, a dot and the request's idx (common/queue.py).
UPDATE requests SET state = {request.running}, attempts = requests.attempts + 1, attempt_id = :stem || '.' || requests.idx,
    lease_owner = :owner, lease_until = :until
FROM unnest(CAST(:idxs AS integer[])) AS v(idx)
WHERE requests.batch_id = :batch_id AND requests.idx = v.idx;

-- name: close_lost
UPDATE requests SET state = {request.done}, attempt_id = NULL, lease_owner = NULL, lease_until = NULL,
    status_code = :status_code, response_body = :response_body, request_id = :request_id, error_code = :error_code,
    error_message = :error_message
WHERE batch_id = :batch_id AND idx = :idx AND state = {request.running} AND attempt_id = :attempt_id;

-- name: renew
-- By primary key, every lease of a chunk in one statement (``Tx.bulk``: each parameter an array), each
-- only while its attempt id still holds the claim.
UPDATE requests r SET lease_until = v.until
FROM unnest(CAST(:batch_id AS text[]), CAST(:idx AS integer[]), CAST(:attempt_id AS text[]),
            CAST(:until AS double precision[])) AS v(batch_id, idx, attempt_id, until)
WHERE r.batch_id = v.batch_id AND r.idx = v.idx AND r.attempt_id = v.attempt_id
  AND r.state + 0 = {request.running};  -- by primary key, never by requests_running (see complete_all)

-- name: complete
UPDATE requests SET state = {request.done}, status_code = :status_code, response_body = :response_body,
    request_id = :request_id, error_code = :error_code, error_message = :error_message,
    input_tokens = :input_tokens, output_tokens = :output_tokens, attempt_id = NULL, lease_owner = NULL,
    lease_until = NULL
WHERE batch_id = :batch_id AND idx = :idx AND attempt_id = :attempt_id AND state = {request.running};

-- name: complete_all
-- Every result of a chunk in one statement (``Tx.bulk``: each parameter is an array of the rows' values).
-- The rows are found by primary key: ``state + 0`` keeps the planner off the ``requests_running`` partial
-- index, which it preferred on statistics that saw few running rows and which then read every running
-- row of every worker and every dead entry left since the last vacuum, for each chunk (a cost that grew
-- as a big batch ran).
UPDATE requests r SET state = {request.done}, status_code = v.status_code, response_body = v.response_body,
    request_id = v.request_id, error_code = v.error_code, error_message = v.error_message,
    input_tokens = v.input_tokens, output_tokens = v.output_tokens, attempt_id = NULL, lease_owner = NULL,
    lease_until = NULL
FROM unnest(CAST(:batch_id AS text[]), CAST(:idx AS integer[]), CAST(:attempt_id AS text[]),
            CAST(:status_code AS integer[]), CAST(:response_body AS bytea[]), CAST(:request_id AS text[]),
            CAST(:error_code AS text[]), CAST(:error_message AS text[]), CAST(:input_tokens AS integer[]),
            CAST(:output_tokens AS integer[]))
     AS v(batch_id, idx, attempt_id, status_code, response_body, request_id, error_code, error_message,
          input_tokens, output_tokens)
WHERE r.batch_id = v.batch_id AND r.idx = v.idx AND r.attempt_id = v.attempt_id AND r.state + 0 = {request.running};

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
UPDATE requests SET state = {request.pending}, attempt_id = NULL, lease_owner = NULL, lease_until = NULL
WHERE state = {request.running};

-- name: release_leases_of
UPDATE requests SET state = {request.pending}, attempt_id = NULL, lease_owner = NULL, lease_until = NULL
WHERE state = {request.running} AND lease_owner = :owner;
