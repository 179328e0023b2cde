"""Recommenders. Each scores arbitrary users from their history (a users x items CSR matrix) without retraining."""
