"""transfer-rec: what several recommendation platforms know, used to recommend well on each of them.

Layers, in the order data flows; a module imports only from its own layer's earlier modules and lower layers
(tests/unit/test_layers.py checks this on the import graph):

    config, manifests, runtime   settings, stage manifests, processes and threads
    io                           locations, formats, the state folder, the embedded platforms
    schema                       the unified tables and the Great Expectations suites that guard them
    ops                          what an operator reads: failure lines, links
    metrics                      ranking metrics, uncertainty, segments, figures
    recommender                  the model and its parts, the baselines
    selection                    what is chosen on valid: the short-history parts' weights, the source's share
    serving                      the bundle every ranking goes through, the MLflow pyfunc model
    registry                     MLflow tracking and the model registry
    stages                       pull, validate, unify, features, train, evaluate, promote, publish; the facade
    benchmark, cli               the side-by-side benchmark and the operator's commands
"""

import logging as _logging

# Importing Airflow before Great Expectations makes GX log ~200 INFO lines about its docs decorators.
_logging.getLogger("great_expectations").setLevel(_logging.WARNING)
