"""Hydra sweeper `hydra/sweeper=lrlab_optuna` (lrlab's optuna 4 search through `lrlab train -m`)."""
