"""Stage-2 ranking: a multi-objective ranker over the two-tower's candidates."""
