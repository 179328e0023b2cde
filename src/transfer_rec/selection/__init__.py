"""Choices made on the target's valid split that are not the model's own fitting: the short-history parts' weights
and the source's share."""
