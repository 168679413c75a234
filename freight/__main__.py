from __future__ import annotations

from freight.cli.main import main

main()
