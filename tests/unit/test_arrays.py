"""numpy and pandas values through the codec (in process): dtypes, shapes, orders, out-of-band buffers."""

from __future__ import annotations

import pytest

from pypods._worker import codec, sharedmem
from pypods._worker.sharedmem import open_pair

from .shmpeer import Side, encode_and_send

np = pytest.importorskip("numpy")

ARRAYS = [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)),
    np.array([], dtype=np.uint64),
    np.array(3.5),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    np.array([True, False]),
    np.array(["2024-01-02T03:04:05.123456789"], dtype="datetime64[ns]"),
    np.array([5, -7], dtype="timedelta64[s]"),
    np.array(["ab", "cde"], dtype="U5"),
    np.array([b"x", b"yz"], dtype="S3"),
    np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.arange(6, dtype=">i4"),
    np.arange(4, dtype=np.float16),
    np.arange(20, dtype=np.int32)[::3],
]


def roundtrip(value, big=None):
    return codec.Decoder(big).document(bytes(codec.Encoder(big).document({"v": value})))["v"]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_arrays_round_trip_exactly(array) -> None:
    back = roundtrip(array)
    assert type(back) is np.ndarray
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.f_contiguous == (array.flags.f_contiguous and not array.flags.c_contiguous) or back.ndim < 2
    assert back.flags.writeable


def test_numpy_scalars_keep_their_type() -> None:
    for scalar in (np.float32(1.5), np.int64(-5), np.bool_(True), np.complex64(1j)):
        back = roundtrip(scalar)
        assert type(back) is type(scalar)
        assert back == scalar


def test_object_arrays_are_refused() -> None:
    with pytest.raises(codec.EncodeError, match="dtype object"):
        codec.encode({"v": np.array([object()])})


def test_large_arrays_are_mapped_in_place_from_shared_memory() -> None:
    pair = open_pair()
    if pair is None:
        pytest.skip("no memfd here")
    sender, theirs = pair
    receiver = sharedmem.FdChannel(theirs)
    left, right = Side(sender), Side(receiver)
    array = np.random.default_rng(1).random((512, 256))
    data = bytes(encode_and_send(lambda big: codec.Encoder(big).document({"v": array}), left, right, 1 << 16))
    assert len(data) < 1000  # the payload went out of band
    back = codec.Decoder(right.oob()).document(data)["v"]
    np.testing.assert_array_equal(back, array)
    back[0, 0] = -1.0  # writable, and private to the receiver
    sender.close()
    receiver.close()


def test_pandas_frames_and_series_round_trip() -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None], "c": pd.to_datetime(["2024-01-01"] * 3)})
    frame.index = pd.Index([10, 20, 30], name="idx")
    pd.testing.assert_frame_equal(roundtrip(frame), frame)
    series = pd.Series([1.5, 2.5], name="s")
    pd.testing.assert_series_equal(roundtrip(series), series)
    unnamed = pd.Series([1, 2])
    pd.testing.assert_series_equal(roundtrip(unnamed), unnamed)


def test_a_default_range_index_stays_a_range_index() -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"a": [1, 2, 3]})
    back = roundtrip(frame)
    pd.testing.assert_frame_equal(back, frame, check_index_type=True)
    assert type(back.index) is pd.RangeIndex
    assert type(roundtrip(pd.Series([1.5, 2.5], name="s")).index) is pd.RangeIndex
    stepped = pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(10, 14, 2, name="r"))
    pd.testing.assert_frame_equal(roundtrip(stepped), stepped, check_index_type=True)
