-- Scheduling (freight/store/common/scheduling.py): priority, pause, and model time used per project.

-- name: set_priority
UPDATE batches SET priority = :priority WHERE id = :id AND project = :project AND status NOT IN {batch.terminal};

-- name: pause_batch
-- Paused only while active; pausing a paused batch keeps its first paused_at.
UPDATE batches SET paused_at = COALESCE(paused_at, :at)
WHERE id = :id AND project = :project AND status NOT IN {batch.terminal};

-- name: resume_batch
UPDATE batches SET paused_at = NULL WHERE id = :id AND project = :project AND status NOT IN {batch.terminal};

-- name: add_usage
INSERT INTO project_usage (project, bucket, seconds) VALUES (:project, :bucket, :seconds)
ON CONFLICT (project, bucket) DO UPDATE SET seconds = project_usage.seconds + excluded.seconds;

-- name: usage_since
SELECT project, SUM(seconds) AS seconds FROM project_usage WHERE bucket >= :since GROUP BY project;

-- name: forget_usage
DELETE FROM project_usage WHERE bucket < :before;
