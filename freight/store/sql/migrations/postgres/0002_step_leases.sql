-- Which process runs the batch steps (StepLeases; several processes on one store).
CREATE TABLE IF NOT EXISTS step_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
