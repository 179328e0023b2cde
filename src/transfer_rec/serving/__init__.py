"""Serving: the bundle every ranking goes through (evaluation, publishing, requests) and the MLflow pyfunc model."""
