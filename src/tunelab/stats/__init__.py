"""Uncertainty of evaluation results, computed with scipy / statsmodels / scikit-learn (none by hand).

`records` (the per-sample record and the interval, light to import), `samples` (a metric on per-sample
records), `intervals` (Wilson / bootstrap interval of one score), `paired` (differences on the same test
samples), `replicates` (seed as replication), `power` (the smallest difference a test split resolves).
"""
