"""Which λ a photo is encoded at: a fixed grid index, or the largest file within a byte budget."""
from __future__ import annotations

from codec import api
from codec.lambdas import lambda_of_index


def encode(model, backend, photo, rate):
    """Returns codec.api.Encoded. The backend supplies the analysis transforms at the chosen λ."""
    opts = {"tile_px": rate.tile_px, "threads": rate.threads}
    if rate.mode == "fixed":
        return api.compress(model, photo, rate.lambda_index,
                            transforms=backend.transforms(lambda_of_index(rate.lambda_index)), **opts)
    return api.compress_to_budget(model, photo, rate.max_bytes, transforms_for=backend.transforms, **opts)
