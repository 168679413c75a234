"""freight inside the data pipelines people already use: Airflow, Dagster, dbt (docs/pipelines.md).

Each adapter lives in its own module and imports its library at the top, so it imports only where
that library is installed (``pip install 'freight[airflow]'``, ``'freight[dagster]'``); this
package and :mod:`freight.integrations.batches` import nothing outside freight. All of them talk to
freight through :mod:`freight.client`.
"""
