-- Failures in a row of a batch's step (StepPolicy), so that the next holder of the batch-steps lease
-- goes on counting instead of starting again (freight/engine/step_failures.py).
CREATE TABLE IF NOT EXISTS step_failures (
    batch_id TEXT PRIMARY KEY,
    failures INTEGER NOT NULL
);
