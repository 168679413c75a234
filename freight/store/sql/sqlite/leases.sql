-- Step leases (freight/store/common/leases.py): which process runs the batch steps.

-- name: acquire_lease
INSERT INTO step_leases (name, holder, expires_at) VALUES (:name, :holder, :until)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE step_leases.holder = excluded.holder OR step_leases.expires_at < :now;

-- name: release_lease
DELETE FROM step_leases WHERE name = :name AND holder = :holder;

-- name: lease_holder
SELECT holder FROM step_leases WHERE name = :name AND expires_at >= :now;

-- name: count_step_failure
INSERT INTO step_failures (batch_id, failures) VALUES (:batch_id, 1)
ON CONFLICT (batch_id) DO UPDATE SET failures = step_failures.failures + 1
RETURNING failures;

-- name: clear_step_failures
DELETE FROM step_failures WHERE batch_id = :batch_id;

-- name: step_failure_counts
SELECT batch_id, failures FROM step_failures;
