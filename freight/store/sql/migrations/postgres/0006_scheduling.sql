-- Scheduling (freight/domain/scheduling.py): each batch's priority and pause, and the model time each
-- project used, by minute bucket, that the fair share between projects measures.
ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN paused_at BIGINT;
CREATE TABLE IF NOT EXISTS project_usage (
    project TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (project, bucket)
);
