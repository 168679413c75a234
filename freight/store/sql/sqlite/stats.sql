-- Metrics read at scrape time (freight/store/common/stats.py): totals kept on batch rows, and the
-- open requests of active batches (the requests_open index), never a scan of finished requests.

-- name: stats_batches
-- busy_s, running_n, running_since: what a machine priced by the hour costs (services/cost.py
-- ended_at): the running seconds of batches that stopped running, and how many run still and since when.
SELECT project, status, model, endpoint, count(*) AS n, sum(completed) AS completed, sum(failed) AS failed,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(CASE WHEN in_progress_at IS NOT NULL AND ended IS NOT NULL THEN ended - in_progress_at ELSE 0 END) AS busy_s,
       sum(CASE WHEN in_progress_at IS NOT NULL AND ended IS NULL THEN 1 ELSE 0 END) AS running_n,
       sum(CASE WHEN in_progress_at IS NOT NULL AND ended IS NULL THEN in_progress_at ELSE 0 END) AS running_since
FROM (SELECT project, status, model, endpoint, completed, failed, input_tokens, output_tokens, in_progress_at,
             CASE WHEN status = {batch.finalizing} THEN finalizing_at
                  WHEN status = {batch.completed} THEN coalesce(finalizing_at, completed_at)
                  WHEN status = {batch.cancelling} THEN cancelling_at
                  WHEN status IN {batch.terminal} THEN coalesce(cancelled_at, expired_at, failed_at, completed_at)
             END AS ended
      FROM batches) b
GROUP BY project, status, model, endpoint;

-- name: stats_open_requests
SELECT b.model, r.state, count(*) AS n FROM batches b JOIN requests r ON r.batch_id = b.id
WHERE b.status NOT IN {batch.terminal} AND r.state < {request.done} GROUP BY b.model, r.state;

-- name: stats_batch_durations
SELECT status, coalesce(completed_at, failed_at, expired_at, cancelled_at) - created_at AS seconds, count(*) AS n
FROM batches WHERE status IN {batch.terminal} GROUP BY status, seconds;
