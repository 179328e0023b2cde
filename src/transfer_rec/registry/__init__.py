"""MLflow: the experiment's runs (tracking) and the model registry (versions, aliases, the champion)."""
