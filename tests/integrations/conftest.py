"""The freight server the pipeline tests talk to (one per module)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from servers import FreightServer, config_text

#: A scripted model with a price, so that a batch can carry a cost cap (max_cost_usd) and show a cost.
PRICED = """
[models."freight-priced"]
backend = "scripted"
price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }
"""


@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    return make_server(config_text(extra=PRICED))
