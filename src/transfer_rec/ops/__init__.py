"""What an operator reads when something happens: one-line failure summaries and the links from Airflow."""
