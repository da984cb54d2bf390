"""`lrlab sweep`: hyperparameter search with optuna's ask/tell, its study in SQLite in the sweep
dir (`study.db`), pruning on an intermediate validation metric, parallel trials on one machine."""
