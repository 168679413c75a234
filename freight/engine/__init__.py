"""The engine: validates batches into requests, claims and runs them on backends, retries,
enforces deadlines and cancellation, and writes each batch's output and error files."""
