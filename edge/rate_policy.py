"""Which λ a photo is encoded at: a fixed grid index, or the largest file within a byte budget."""
from __future__ import annotations

from codec import api
from codec.lambdas import lambda_of_index


class RatePolicy:
    """Encodes photos at the configured rate. In budget mode the search for λ starts at the previous
    photo's answer: a drone's photos come in runs of similar frames, whose answers lie close together."""

    def __init__(self, model, backend, rate):
        self.model, self.backend, self.rate = model, backend, rate
        self.last_index = None

    def encode(self, photo, rate=None):
        """Returns codec.api.Encoded. The backend supplies the analysis transforms at the chosen λ.
        rate: this photo's settings instead of the configured ones (the warm-up encodes at a fixed λ)."""
        rate = rate or self.rate
        opts = {"tile_px": rate.tile_px, "threads": rate.threads, "beta": rate.rounding_beta}
        if rate.mode == "fixed":
            return api.compress(self.model, photo, rate.lambda_index,
                                transforms=self.backend.transforms(lambda_of_index(rate.lambda_index)), **opts)
        enc = api.compress_to_budget(self.model, photo, rate.max_bytes, transforms_for=self.backend.transforms,
                                     start_index=self.last_index, **opts)
        self.last_index = enc.lambda_index
        return enc
