"""Watching freight from outside: webhook deliveries (deliver.py) and Prometheus metrics
(metrics.py). Adapters (they speak HTTP and Prometheus); they read the store's ports and never
change a batch."""
