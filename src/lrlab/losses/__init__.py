"""Training losses (the `loss` group: exactly one per run); see `lrlab.protocol.Loss`."""
