"""Tests for diffusion_bias.instrument.record: the typed per-snapshot record."""

import dataclasses
import io

import numpy as np
import pytest

from diffusion_bias.instrument import record as record_lib


def _arrays(rng, **extra):
    k, n, m = 2, 5, 4
    out = dict(
        similarity=rng.random((1, n)),
        own_d1=rng.random((k, n)),
        own_d2=rng.random((k, n)),
        own_index=rng.integers(0, 9, (k, n)).astype(np.int32),
        other_d1=rng.random((k, n)),
        heldout_d1=rng.random((k, m)),
        heldout_d2=rng.random((k, m)),
        test_losses=rng.random((k, m)),
        train_losses=rng.random((k, 3)),
        partner_losses=rng.random((k, 3)),
        own_losses_t=rng.random((k, 2, 3)),
        partner_losses_t=rng.random((k, 2, 3)),
        heldout_losses_t=rng.random((k, 2, m)),
    )
    out.update(extra)
    return out


def test_a_record_round_trips_through_the_cache_file_bit_for_bit():
    rng = np.random.default_rng(0)
    arrays = _arrays(rng, kl_bp=rng.random((2, 5)).astype(np.float32))
    record = record_lib.SnapshotRecord.from_arrays(arrays)
    assert record.num_models == 2 and record.quality is None
    buffer = io.BytesIO()
    np.savez(buffer, **record.arrays())  # as the analysis caches it
    buffer.seek(0)
    with np.load(buffer) as f:
        again = record_lib.SnapshotRecord.from_arrays({k: f[k] for k in f.files})
    assert set(again.arrays()) == set(arrays)
    for name, value in arrays.items():
        got = getattr(again, name)
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_unknown_or_missing_arrays_are_named():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match=r"unknown \['similarty'\]"):
        record_lib.SnapshotRecord.from_arrays(_arrays(rng, similarty=np.zeros(1)))
    partial = _arrays(rng)
    del partial["own_index"]
    with pytest.raises(ValueError, match=r"missing \['own_index'\]"):
        record_lib.SnapshotRecord.from_arrays(partial)


def test_every_field_of_the_schema_is_described_in_the_docstring():
    doc = record_lib.SnapshotRecord.__doc__
    for field in dataclasses.fields(record_lib.SnapshotRecord):
        assert f"{field.name}:" in doc or f"{field.name}," in doc, field.name
