"""Test and benchmark helpers that ship with freight (not used by the server itself).

- ``freight.testing.upstream``: an OpenAI-compatible upstream simulator (rate limits, latency, faults).
"""
