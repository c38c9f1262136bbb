"""The largest λ grid index whose file fits a byte budget, in about half the encodes of bisection.

Every try is a whole encode (the analysis is conditioned on λ, so nothing carries over between λ), which
made the bisection of the whole 256-point grid cost 8 encodes per photo. A file's size is close to
exponential in the grid index (log bytes rises ~0.0087 per index on blade frames and on Kodak: 0.049 ->
0.465 bpp and 0.146 -> 1.246 bpp from index 0 to 255), so interpolating log size between the tries lands
near the answer after one or two of them. Finishing takes two neighbouring tries (one fits, the next does
not), and the local slope wobbles ±15 % along the grid, so a photo takes about 4 tries in all (measured by
`python -m codec bench-budget`); a search started at the previous photo's answer needs only 2 when that
answer still holds.

The answer is the same as bisection's wherever size grows with the index: an index that fits whose
successor does not (or 255). Each guess is kept close enough to the middle of the bracket that the search
still ends within SPARE_TRIES more tries than bisection would need (the safeguard of the ITP method,
Oliveira and Takahashi 2020), so a badly predicted photo costs at most that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

LOG_BYTES_PER_INDEX = 0.0087   # typical slope of log(file size) against the grid index (measured above)
SPARE_TRIES = 2                # worst case over bisection: 9 + 2 tries on 256 indices


@dataclass
class Search:
    """The bracket so far: `fits` the largest index known to fit, `fails` the smallest known not to."""
    max_bytes: int
    size: int                   # grid size
    fits: int = -1
    fails: int = field(init=False)
    sizes: dict = field(default_factory=dict)   # index -> file size of every try

    def __post_init__(self):
        self.fails = self.size   # index `size` stands for "beyond the grid", which never fits

    @property
    def done(self) -> bool:
        return self.fails - self.fits <= 1

    def record(self, index: int, nbytes: int):
        self.sizes[index] = nbytes
        if nbytes <= self.max_bytes:
            self.fits = index
        else:
            self.fails = index

    def next_index(self) -> int:
        """The predicted index, within the bracket and near enough to its middle that either outcome leaves
        at most 2^(tries left after it) - 1 unknown indices."""
        tries_left = math.ceil(math.log2(self.size + 1)) + SPARE_TRIES - len(self.sizes) - 1
        reach = 2 ** max(tries_left, 0) - 1
        lowest = max(self.fits + 1, self.fails - 1 - reach)
        highest = min(self.fails - 1, self.fits + 1 + reach)
        return min(max(self._predicted(), lowest), highest)

    def _predicted(self) -> int:
        """The index where log size reaches the budget, on the line through the two tries nearest to it
        (one try and the typical slope when there is only one)."""
        target = math.log(self.max_bytes)
        near = sorted(self.sizes, key=lambda i: abs(math.log(self.sizes[i]) - target))[:2]
        i0 = near[0]
        slope = LOG_BYTES_PER_INDEX
        if len(near) == 2 and near[1] != i0:
            i1 = near[1]
            measured = (math.log(self.sizes[i1]) - math.log(self.sizes[i0])) / (i1 - i0)
            if measured > 0:   # a flat or falling stretch says nothing about where the budget lies
                slope = measured
        return math.floor(i0 + (target - math.log(self.sizes[i0])) / slope + 1e-9)


def largest_fitting(encode_at: Callable[[int], tuple], max_bytes: int, size: int,
                    start: Optional[int] = None):
    """encode_at(index) -> (file size in bytes, result). Returns (the index, or None when even index 0 is
    too large; {index: result} of every try). start: the first index to try (default: the middle)."""
    search = Search(max_bytes, size)
    results = {}
    index = size // 2 if start is None else min(max(start, 0), size - 1)
    while not search.done:
        nbytes, results[index] = encode_at(index)
        search.record(index, nbytes)
        if not search.done:
            index = search.next_index()
    return (search.fits if search.fits >= 0 else None), results
