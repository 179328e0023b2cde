"""transfer-rec pipeline stages: plain, typed Python that never imports Airflow.

One module per stage, in the order data flows:
pull -> validate -> unify -> features -> train (pretrain, finetune) -> evaluate -> promote -> publish.
"""

import logging as _logging

# Importing Airflow before Great Expectations makes GX log ~200 INFO lines about its docs decorators.
_logging.getLogger("great_expectations").setLevel(_logging.WARNING)
