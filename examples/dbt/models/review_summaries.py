"""Each review with a one-line summary written by a model served through freight.

The rows go to freight as one batch (freight.integrations.batches.enrich: submit, wait, answers
back in row order); FREIGHT_URL, FREIGHT_API_KEY and FREIGHT_MODEL say where and with what.
"""

import os

from freight.integrations.batches import enrich


def model(dbt, session):
    dbt.config(materialized="table")
    reviews = dbt.ref("reviews").df()
    return enrich(
        reviews,
        model=os.environ.get("FREIGHT_MODEL", "gpt-4o-mini"),
        template="Summarize this review in one short sentence: {text}",
        url=os.environ.get("FREIGHT_URL"),
        api_key=os.environ.get("FREIGHT_API_KEY"),
        column="summary",
        body={"max_tokens": 32},
        poll_s=0.5,
    )
