"""The one error type of `cir triplets` that is the user's to fix."""

from __future__ import annotations


class TripletUsageError(ValueError):
    """A value of `cir triplets` to change (a `--pairs` form, a collection, an image path, the output file);
    the message says how. A ValueError, so `cir` prints it as one line and exits with status 2."""
