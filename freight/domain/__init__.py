"""The pure domain: batches, requests, files, ids, retry and durations. Stdlib only, no I/O."""
