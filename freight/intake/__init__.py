"""Queue intake: single requests from message queues (RabbitMQ, Redis Streams, HTTP tickets), collected
and flushed as ordinary freight batches, with each result sent back where the producer asked.
docs/intake.md."""
