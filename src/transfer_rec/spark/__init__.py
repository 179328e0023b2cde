"""The Spark engine of the ingest stages (`engine: spark` in the config): validate, unify and features on Apache
Spark, with the pandas engine's results (stages/ holds the pandas engine and the logic both share)."""
