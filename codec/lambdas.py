"""The fixed λ grid shared by encoder and decoder.

The bitstream carries λ as an index so that both sides condition the networks on the very same value.
"""
import math

LAMBDA_MIN = 64.0
LAMBDA_MAX = 8192.0
GRID_SIZE = 256  # log-spaced points: neighbouring λ differ by 1.9 %, fine enough for byte budgets


def lambda_of_index(index: int) -> float:
    if not 0 <= index < GRID_SIZE:
        raise ValueError(f"λ index {index} outside 0..{GRID_SIZE - 1}")
    t = index / (GRID_SIZE - 1)
    return float(math.exp(math.log(LAMBDA_MIN) + t * (math.log(LAMBDA_MAX) - math.log(LAMBDA_MIN))))


def index_of_lambda(lam: float) -> int:
    """Nearest grid index (in log space) for a λ inside [LAMBDA_MIN, LAMBDA_MAX]."""
    if not (LAMBDA_MIN <= lam <= LAMBDA_MAX):
        raise ValueError(f"λ {lam:g} outside [{LAMBDA_MIN:g}, {LAMBDA_MAX:g}]")
    t = (math.log(lam) - math.log(LAMBDA_MIN)) / (math.log(LAMBDA_MAX) - math.log(LAMBDA_MIN))
    return int(round(t * (GRID_SIZE - 1)))


def normalised_log_lambda(lam):
    """Maps λ to [0, 1] on the log scale; works on floats and tensors alike."""
    lo, hi = math.log(LAMBDA_MIN), math.log(LAMBDA_MAX)
    if isinstance(lam, (int, float)):
        return (math.log(lam) - lo) / (hi - lo)
    return (lam.log() - lo) / (hi - lo)
