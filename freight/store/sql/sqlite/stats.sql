-- Metrics read at scrape time (freight/store/common/stats.py): totals kept on batch rows, and the
-- open requests of active batches (the requests_open index), never a scan of finished requests.

-- name: stats_batches
SELECT project, status, model, endpoint, count(*) AS n, sum(completed) AS completed, sum(failed) AS failed,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
FROM batches GROUP BY project, status, model, endpoint;

-- name: stats_open_requests
SELECT b.model, r.state, count(*) AS n FROM batches b JOIN requests r ON r.batch_id = b.id
WHERE b.status NOT IN {batch.terminal} AND r.state < {request.done} GROUP BY b.model, r.state;

-- name: stats_batch_durations
SELECT status, coalesce(completed_at, failed_at, expired_at, cancelled_at) - created_at AS seconds, count(*) AS n
FROM batches WHERE status IN {batch.terminal} GROUP BY status, seconds;
