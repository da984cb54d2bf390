"""Parametrizations: methods that train a weight in another form (`lrlab.protocol.Method` with
`transform_model`), e.g. weight norm for GradNormLoRP."""
