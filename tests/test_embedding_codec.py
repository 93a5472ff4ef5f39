"""The record text of an appearance embedding: round trip, bounds and refusals."""

import base64

import numpy as np
import pytest

from edgetile.runtime.embedding import DIM, decode_embedding, encode_embedding, similarity


def test_round_trip_keeps_direction_within_float16():
    rng = np.random.default_rng(0)
    v = rng.normal(size=DIM).astype(np.float32)
    text = encode_embedding(v)
    assert len(text) == 344
    back = decode_embedding(text)
    assert back.shape == (DIM,)
    assert abs(float(np.linalg.norm(back)) - 1.0) < 1e-6
    assert similarity(back, v) > 0.9999


def test_similarity_orders_near_and_far():
    rng = np.random.default_rng(1)
    a = rng.normal(size=DIM)
    near = a + 0.1 * rng.normal(size=DIM)
    far = rng.normal(size=DIM)
    ta, tn, tf = encode_embedding(a), encode_embedding(near), encode_embedding(far)
    assert similarity(ta, tn) > 0.95 > similarity(ta, tf)
    assert similarity(ta, encode_embedding(-a)) < -0.999


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not base64!", "expected base64 text"),
        (base64.b64encode(b"\0" * 10).decode(), "expected 256 bytes"),
        (base64.b64encode(np.full(DIM, np.nan, "<f2").tobytes()).decode(), "expected finite"),
        (12, "expected base64 text, found int"),
    ],
)
def test_decode_refuses_what_is_not_an_embedding(bad, message):
    with pytest.raises(ValueError, match=message):
        decode_embedding(bad)


def test_encode_refuses_wrong_size_and_zero():
    with pytest.raises(ValueError, match=f"expected {DIM} values, found 3"):
        encode_embedding(np.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        encode_embedding(np.zeros(DIM))
