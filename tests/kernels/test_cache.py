"""The local volume cache, through the real gateway: a second load of an
unchanged series comes from disk; a changed series, a changed array or a
lost permission never gets stale data."""

from __future__ import annotations

import stat

import numpy as np
import pytest
from pydicom.uid import generate_uid
from tests_support import in_memory_ct

from imaginghub.hub import demo
from imaginghub.kernels.dicomweb import PACS
from imaginghub.kernels.errors import NotFound


def positioned(series, study, k):
    ds = in_memory_ct(series, study, value=k)
    ds.ImagePositionPatient = [0, 0, 2.0 * k]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    return ds


@pytest.fixture()
def alice(stack, tmp_path):
    return PACS(stack.run["gateway_url"], token=stack.token("alice"), cache_dir=tmp_path / "c")


def test_second_load_comes_from_the_cache(alice, tmp_path):
    uid = demo.series("ct-slice").series_uid
    first = alice.load_series(uid, progress=False)
    alice.cache.flush()
    assert alice.cache.info()["volumes"] == 1
    second = alice.load_series(uid, progress=False)
    assert isinstance(second.array, np.memmap)
    assert np.array_equal(first.array, second.array)
    assert (first.spacing, first.origin) == (second.spacing, second.origin)
    assert np.allclose(first.direction, second.direction)
    assert first.metadata == second.metadata
    # private: the directory and the files are the user's alone
    root = tmp_path / "c"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in root.iterdir()} == {0o600}
    # changing the array changes neither the cache nor the next load
    second.array[...] = 12345
    third = alice.load_series(uid, progress=False)
    assert np.array_equal(third.array, first.array)
    # cache=False goes to the archive
    fresh = alice.load_series(uid, progress=False, cache=False)
    assert not isinstance(fresh.array, np.memmap)


def test_a_changed_series_is_loaded_again(alice):
    study, series = generate_uid(), generate_uid()
    alice.store_instances([positioned(series, study, k) for k in range(3)])
    assert alice.load_series(series, progress=False).shape[0] == 3
    alice.cache.flush()
    alice.store_instances([positioned(series, study, 3)])
    again = alice.load_series(series, progress=False)
    assert again.shape[0] == 4 and not isinstance(again.array, np.memmap)
    alice.cache.flush()
    assert isinstance(alice.load_series(series, progress=False).array, np.memmap)


def test_the_cache_does_not_bypass_permissions(alice, stack, tmp_path):
    uid = demo.series("ct-slice").series_uid  # oncology's
    alice.load_series(uid, progress=False)
    alice.cache.flush()
    bob = PACS(stack.run["gateway_url"], token=stack.token("bob"), cache_dir=tmp_path / "c")
    with pytest.raises(NotFound):
        bob.load_series(uid, progress=False)


def test_least_recently_used_volumes_leave_first(stack, tmp_path):
    small = PACS(stack.run["gateway_url"], token=stack.token("alice"),
                 cache_dir=tmp_path / "c", cache_gb=1.5e-3)  # 1.5 MB
    # 1 MB, 64 kB, then 1 MB again: the first must leave to make room
    uids = [demo.series(k).series_uid for k in ("ct-slice", "ct-small", "ct-slice-j2k")]
    for uid in uids:
        small.load_series(uid, progress=False)
        small.cache.flush()
    assert small.cache.info()["volumes"] == 2
    assert small.cache.etag(small.url, uids[0], "float32") is None
    assert small.cache.etag(small.url, uids[2], "float32") is not None
