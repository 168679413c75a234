"""The ``freight`` command line."""
