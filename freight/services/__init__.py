"""Use cases: what the HTTP API and the CLI can ask of freight. They see only ports."""
