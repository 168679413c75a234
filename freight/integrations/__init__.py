"""freight inside the data pipelines people already use: Airflow, Dagster, dbt (docs/pipelines.md).

Each adapter lives in its own module and imports its library at the top, so it imports only where
that library is installed (``pip install 'freight[airflow]'``, ``'freight[dagster]'``,
``'freight[dbt]'``); this package and :mod:`freight.integrations.batches` import no pipeline
library. All of them talk to freight through :mod:`freight.client`; import-linter keeps the
pipeline libraries out of the rest of freight.
"""
