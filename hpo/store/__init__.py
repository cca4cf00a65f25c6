"""Storage: the one place that reads storage URLs, the retry layer that rides out database outages,
the one module that uses Optuna's private telling step, a study's own records, and the artifacts
a trial leaves. Imports no torch, so ``hpo status`` and ``hpo export`` start fast."""
