"""Evaluation kept apart from the models: ranking metrics, their uncertainty, beyond-accuracy measures, segments
and the figures a reviewer reads."""
