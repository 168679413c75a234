-- Issue 12: a batch's spending cap (max_cost_usd), its own output check (output_schema, JSON text),
-- and the invalid answers it has had (invalid_outputs).
ALTER TABLE batches ADD COLUMN max_cost_usd REAL;
ALTER TABLE batches ADD COLUMN output_schema TEXT;
ALTER TABLE batches ADD COLUMN invalid_outputs INTEGER NOT NULL DEFAULT 0;
