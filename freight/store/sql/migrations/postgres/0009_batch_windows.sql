-- Issue 13: off-peak windows (freight/domain/windows.py). A batch's schedule ('off_peak', or NULL: as
-- soon as it can) and not_before (unix seconds, or NULL), both extension parameters on create.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS schedule TEXT;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS not_before BIGINT;
