"""videorec: an open video recommendation pipeline (see README.md)."""
