"""Store adapters: SQLite (the embedded default) and local blob files."""
