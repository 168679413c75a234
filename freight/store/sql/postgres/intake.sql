-- Queue intake (freight/store/common/intake.py): every message taken from a source until its result
-- is delivered. A message is deduplicated on (source, message_id); a flush takes pending messages
-- (compare-and-set on flush_id) and makes one batch per url and model.

-- name: insert_intake
INSERT INTO intake_messages (source, message_id, custom_id, url, body, reply_to, correlation_id, received_at,
                             deadline, result, flush_id, batch_id, delivered)
VALUES (:source, :message_id, :custom_id, :url, :body, :reply_to, :correlation_id, :received_at, :deadline,
        :result, :flush_id, :batch_id, :delivered) ON CONFLICT (source, message_id) DO NOTHING;

-- name: intake_pending
SELECT seq, source, message_id, custom_id, url, body, reply_to, correlation_id, received_at, deadline, result, flush_id, batch_id, delivered FROM intake_messages
WHERE source = :source AND flush_id IS NULL AND result IS NULL ORDER BY seq;

-- name: claim_intake
UPDATE intake_messages SET flush_id = :flush_id
WHERE seq IN (SELECT seq FROM intake_messages
              WHERE source = :source AND flush_id IS NULL AND result IS NULL ORDER BY seq LIMIT :limit)
  AND flush_id IS NULL;

-- name: open_intake_flushes
SELECT DISTINCT flush_id FROM intake_messages
WHERE source = :source AND flush_id IS NOT NULL AND batch_id IS NULL AND result IS NULL;

-- name: intake_flush
SELECT seq, source, message_id, custom_id, url, body, reply_to, correlation_id, received_at, deadline, result, flush_id, batch_id, delivered FROM intake_messages WHERE flush_id = :flush_id ORDER BY seq;

-- name: set_intake_batch
UPDATE intake_messages SET batch_id = :batch_id
WHERE seq = :seq AND flush_id = :flush_id AND batch_id IS NULL AND result IS NULL;

-- name: set_intake_result
UPDATE intake_messages SET result = :result
WHERE source = :source AND message_id = :message_id AND batch_id IS NULL AND result IS NULL;

-- name: intake_undelivered
SELECT seq, source, message_id, custom_id, url, body, reply_to, correlation_id, received_at, deadline, result, flush_id, batch_id, delivered FROM intake_messages
WHERE source = :source AND delivered = 0 AND (result IS NOT NULL OR batch_id IS NOT NULL)
ORDER BY seq LIMIT :limit;

-- name: mark_intake_delivered
UPDATE intake_messages SET delivered = 1 WHERE source = :source AND message_id = :message_id AND delivered = 0;

-- name: intake_message
SELECT seq, source, message_id, custom_id, url, body, reply_to, correlation_id, received_at, deadline, result, flush_id, batch_id, delivered FROM intake_messages WHERE source = :source AND message_id = :message_id;
