"""Uncertainty of evaluation results, computed with scipy / statsmodels / scikit-learn (none by hand)."""
