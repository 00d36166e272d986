"""Data sources: the synthetic video platform and the MovieLens importer."""
