-- Issue 12: a batch's spending cap (max_cost_usd), its own output check (output_schema, JSON text)
-- and the invalid answers it has had (invalid_outputs).
ALTER TABLE batches ADD COLUMN IF NOT EXISTS max_cost_usd DOUBLE PRECISION;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS output_schema TEXT;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS invalid_outputs BIGINT NOT NULL DEFAULT 0;
