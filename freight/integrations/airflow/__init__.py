"""The Airflow provider: :class:`FreightBatchOperator` (deferrable) and :class:`FreightBatchTrigger`.

Needs ``pip install 'freight[airflow]'``. Airflow finds the provider through the
``apache_airflow_provider`` entry point, which calls :func:`get_provider_info` (importing it does
not import Airflow). docs/pipelines.md shows a DAG.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` shows about this package."""
    return {
        "package-name": "freight",
        "name": "freight",
        "description": "Submit batches to freight and wait for them in the triggerer.",
        "versions": ["0.1.0"],
        "operators": [{"integration-name": "freight",
                       "python-modules": ["freight.integrations.airflow.operators"]}],
        "triggers": [{"integration-name": "freight",
                      "python-modules": ["freight.integrations.airflow.triggers"]}],
    }
