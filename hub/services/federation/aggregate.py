"""What the coordinator makes of a round: the sites' released outputs
(bytes, as the egress gate encoded them) checked again and combined.

- :func:`fedavg`: federated averaging of state dicts, weighted by each
  site's sample count;
- :func:`sum_counts`: federated statistics, counts by category or by bin
  summed over the sites.

The same inputs always give the same bytes: sites are combined in the
order of their names, whatever order they answered in; sums are made in
float64 and cast back to each tensor's dtype once, at the end. What arrived
is decoded without pickles (safetensors, JSON) and checked against the
round's reference as the gate checked it at the site: a coordinator does
not trust a site's gate either.
"""

from __future__ import annotations

import json

from .egress import EgressError, Share, check_tensors


class AggregationError(ValueError):
    """A round's contributions cannot be combined (the message says whose
    and why)."""


def decode_state_dict(site: str, data: bytes, share: Share, reference) -> dict:
    """A site's released weights as numpy arrays, checked against the
    round's reference."""
    from safetensors.numpy import load

    if len(data) > share.max_bytes:
        raise AggregationError(f"site {site}: {share.name} is over {share.max_bytes} bytes")
    try:
        tensors = load(data)
    except Exception as e:  # malformed bytes: said, never trusted
        raise AggregationError(f"site {site}: {share.name} is not safetensors "
                               f"({type(e).__name__})") from None
    try:
        return check_tensors(share.name, tensors, share, reference)
    except EgressError as e:
        raise AggregationError(f"site {site}: {e}") from None


def decode_json(site: str, data: bytes, what: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AggregationError(f"site {site}: {what} is not JSON") from None


def fedavg(contributions: dict[str, tuple[int, dict]]) -> dict:
    """{site: (sample count, state dict)} averaged, weighted by the counts.
    Sites are taken in the order of their names; a site with no samples
    counts for nothing; all sites must have the same names, shapes and
    dtypes (the reference made sure of it)."""
    import numpy as np

    if not contributions:
        raise AggregationError("no site contributed to the round")
    sites = sorted(contributions)
    counts = {}
    for site in sites:
        n = contributions[site][0]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise AggregationError(f"site {site}: the sample count is a whole number of at "
                                   "least 0")
        counts[site] = n
    total = sum(counts.values())
    if total == 0:
        raise AggregationError("no site had a sample in this round")
    first = contributions[sites[0]][1]
    for site in sites[1:]:
        other = contributions[site][1]
        if set(other) != set(first) or any(
                other[k].shape != first[k].shape or other[k].dtype != first[k].dtype
                for k in first):
            raise AggregationError(f"site {site}'s weights do not match site {sites[0]}'s")
    out = {}
    for key in sorted(first):
        acc = np.zeros(first[key].shape, dtype=np.float64)
        for site in sites:
            if counts[site]:
                acc += contributions[site][1][key].astype(np.float64) * counts[site]
        out[key] = (acc / total).astype(first[key].dtype)
    return out


def sum_counts(contributions: dict[str, dict | list], share: Share) -> dict | list:
    """Counts (by the share's categories, or its bins) summed over the
    sites; each site's counts checked against the declaration again."""
    total = {c: 0 for c in share.categories} if share.categories else [0] * share.bins
    for site in sorted(contributions):
        value = contributions[site]
        if share.categories:
            if not isinstance(value, dict) or set(value) - set(share.categories):
                raise AggregationError(f"site {site}: {share.name} is not counts by the "
                                       "declared categories")
            items = [(c, value.get(c, 0)) for c in share.categories]
        else:
            if not isinstance(value, list) or len(value) != share.bins:
                raise AggregationError(f"site {site}: {share.name} is not {share.bins} counts")
            items = list(enumerate(value))
        for key, n in items:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise AggregationError(f"site {site}: {share.name} has a count that is not a "
                                       "whole number of at least 0")
            total[key] += n
    return total


# -- training: the model a study starts from, and the weights as bytes --------------------
def initial_weights(model: dict, seed: int) -> dict:
    """The first round's weights: the training workflow's ``model``
    (``{"class", "args"}``) built with MONAI's ``set_determinism(seed)``, as
    numpy arrays by name (the same seed gives the same weights)."""
    from monai.utils import set_determinism

    from ....kernels.models import build_network

    set_determinism(seed)
    network = build_network(model)
    state = network.state_dict()
    return {k: state[k].detach().cpu().numpy() for k in sorted(state)}


def encode_weights(weights: dict) -> bytes:
    """Weights as safetensors bytes without metadata (names, dtypes, shapes,
    values; the same weights always give the same bytes)."""
    import numpy as np
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(weights[k]) for k in sorted(weights)})


def decode_weights(data: bytes) -> dict:
    """Weights from safetensors bytes (never a pickle)."""
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as e:  # malformed bytes: said, never trusted
        raise AggregationError(f"the weights are not safetensors ({type(e).__name__})") \
            from None


def reference_of(weights: dict) -> dict:
    """{name: (dtype, shape)}: what a round's weights must look like."""
    return {k: (v.dtype.name, tuple(v.shape)) for k, v in weights.items()}
