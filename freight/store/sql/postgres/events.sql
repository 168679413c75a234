-- Batch events and webhooks (freight/store/common/events.py). Event rows are written by the
-- batch status changes (batches.sql's callers), in their transaction. Delivery states: 0 pending,
-- 1 delivered, 2 given up (freight.domain.webhooks.DeliveryState).

-- name: lock_events
-- Event rows get their seq and commit one at a time, so that seq order is commit order:
-- a reader after seq N can never miss a row that commits later with a smaller seq.
SELECT pg_advisory_xact_lock(hashtext('freight.batch_events'));

-- name: insert_event
INSERT INTO batch_events (id, batch_id, project, old_status, new_status, at)
SELECT :event_id, id, project, :old_status, :new_status, :at FROM batches WHERE id = :batch_id;

-- name: events_after
SELECT seq, id, batch_id, project, old_status, new_status, at FROM batch_events
WHERE seq > :after AND (CAST(:project AS TEXT) IS NULL OR project = CAST(:project AS TEXT)) ORDER BY seq LIMIT :limit;

-- name: last_event_seq
SELECT coalesce(max(seq), 0) AS seq FROM batch_events;

-- name: events_to_plan
SELECT e.seq, e.id, e.batch_id, e.project, e.old_status, e.new_status, e.at,
       EXISTS (SELECT 1 FROM message_batches m WHERE m.batch_id = e.batch_id) AS anthropic
FROM batch_events e WHERE e.seq > :after ORDER BY e.seq LIMIT :limit;

-- name: event_cursor
SELECT seq FROM event_cursors WHERE name = :name;

-- name: set_event_cursor
INSERT INTO event_cursors (name, seq) VALUES (:name, :seq) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq;

-- name: insert_webhook_endpoint
INSERT INTO webhook_endpoints (id, project, name, url, event_types, secret, old_secret, old_secret_until,
                               created_at, updated_at)
VALUES (:id, :project, :name, :url, :event_types, :secret, :old_secret, :old_secret_until, :created_at,
        :updated_at);

-- name: webhook_endpoint
SELECT id, project, name, url, event_types, secret, old_secret, old_secret_until, created_at, updated_at FROM webhook_endpoints WHERE id = :id AND project = :project AND deleted = 0;

-- name: webhook_endpoint_seq
SELECT seq FROM webhook_endpoints WHERE id = :id AND project = :project;

-- name: list_webhook_endpoints
SELECT id, project, name, url, event_types, secret, old_secret, old_secret_until, created_at, updated_at FROM webhook_endpoints
WHERE project = :project AND deleted = 0 AND (CAST(:after_seq AS BIGINT) IS NULL OR seq < :after_seq)
ORDER BY seq DESC LIMIT :limit;

-- name: webhook_endpoints_of
SELECT id, project, name, url, event_types, secret, old_secret, old_secret_until, created_at, updated_at FROM webhook_endpoints WHERE deleted = 0 AND project = ANY(:projects) ORDER BY seq;

-- name: update_webhook_endpoint
UPDATE webhook_endpoints SET name = :name, url = :url, event_types = :event_types, secret = :secret,
    old_secret = :old_secret, old_secret_until = :old_secret_until, updated_at = :updated_at
WHERE id = :id AND project = :project AND deleted = 0;

-- name: delete_webhook_endpoint
UPDATE webhook_endpoints SET deleted = 1 WHERE id = :id AND project = :project AND deleted = 0;

-- name: drop_pending_deliveries
DELETE FROM webhook_deliveries WHERE endpoint_id = :endpoint_id AND state = 0;

-- name: insert_delivery
INSERT INTO webhook_deliveries (event_seq, endpoint_id, next_at) VALUES (:event_seq, :endpoint_id, :next_at)
ON CONFLICT (event_seq, endpoint_id) DO NOTHING;

-- name: due_deliveries
SELECT d.seq AS d_seq, d.attempts AS d_attempts,
       e.seq AS e_seq, e.id AS e_id, e.batch_id AS e_batch_id, e.project AS e_project, e.old_status AS e_old_status,
       e.new_status AS e_new_status, e.at AS e_at,
       w.id, w.project, w.name, w.url, w.event_types, w.secret, w.old_secret, w.old_secret_until, w.created_at, w.updated_at
FROM webhook_deliveries d JOIN batch_events e ON e.seq = d.event_seq JOIN webhook_endpoints w ON w.id = d.endpoint_id
WHERE d.state = 0 AND d.next_at <= :now ORDER BY d.next_at, d.seq LIMIT :limit;

-- name: delivery_attempted
UPDATE webhook_deliveries SET state = :state, attempts = attempts + 1, next_at = coalesce(CAST(:next_at AS DOUBLE PRECISION), next_at),
    last_status = :last_status, last_error = :last_error, done_at = :done_at
WHERE seq = :seq AND state = 0;

-- name: delivery_states
SELECT e.id AS event_id, d.state, d.attempts FROM webhook_deliveries d JOIN batch_events e ON e.seq = d.event_seq
WHERE d.endpoint_id = :endpoint_id ORDER BY d.event_seq;
