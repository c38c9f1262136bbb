"""Learned image codec for wind-turbine blade inspection photos (nested latent variable model)."""
__version__ = "0.1.0"
