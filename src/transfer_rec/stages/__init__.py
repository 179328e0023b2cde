"""The pipeline's stages in the order data flows (pull, validate, unify, features, train, evaluate, promote, publish)
and the facade the DAGs call (pipeline.py)."""
