"""``python -m freight.testing.upstream``: the simulator as a process (see ``--help``)."""

from freight.testing.upstream.run import main

main()
