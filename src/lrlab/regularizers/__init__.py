"""Regularizers: methods that add a loss term or transform features; several can be stacked
(`regularizer=[elr,nuclear]`). Each is a `lrlab.protocol.Method`."""
