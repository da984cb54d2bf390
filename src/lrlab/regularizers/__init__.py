"""Regularizers and losses; see `base.Regularizer` for the protocol. Several can be stacked."""

from lrlab.regularizers.base import Regularizer

__all__ = ["Regularizer"]
