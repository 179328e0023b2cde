"""The unified schema: its tables' columns, types and keys, and the Great Expectations suites that guard them."""
