"""HTTP façades: thin routes over the services (OpenAI Files + Batches, models)."""
