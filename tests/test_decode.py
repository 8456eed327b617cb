import msgpack
import numpy as np
import pytest

from inspector.decode import decode, encode
from inspector.errors import DecodeError
from inspector.feed import corrupt
from inspector.protocol import FRAME_FIELD, FrameMessage, identity, parse_frame


def message(image: np.ndarray, encoding: str) -> FrameMessage:
    return FrameMessage("f-1", "cam", 1, 1.0, *image.shape, encoding, encode(image, encoding))


@pytest.mark.parametrize("encoding", ["gray8", "png", "jpeg"])
def test_encodings_decode(encoding: str) -> None:
    image = (np.random.default_rng(0).random((256, 1600)) * 40 + 100).astype(np.uint8)
    got = decode(parse_frame({FRAME_FIELD: message(image, encoding).pack()}))
    if encoding == "jpeg":
        assert np.abs(got.astype(int) - image).mean() < 3  # lossy
    else:
        assert np.array_equal(got, image)


def test_real_severstal_jpeg_decodes(sample_dir) -> None:
    data = sorted((sample_dir / "images").iterdir())[0].read_bytes()
    msg = FrameMessage("x", "cam", 0, 0.0, 256, 1600, "jpeg", data)
    assert decode(msg).shape == (256, 1600)


@pytest.mark.parametrize("kind, message_part", [
    ("truncated", "truncated"),
    ("wrong_size", "wrong size"),
    ("unknown_encoding", "unknown encoding"),
    ("not_msgpack", "not msgpack"),
])
def test_malformed_frames_raise_decode_error(kind: str, message_part: str) -> None:
    with pytest.raises(DecodeError, match=message_part):
        decode(parse_frame(corrupt(kind)))


@pytest.mark.parametrize("fields, message_part", [
    ({}, "no 'f' field"),                                                   # entry without the field
    ({FRAME_FIELD: msgpack.packb([1, 2])}, "must be a msgpack map"),        # msgpack, but not a map
    ({FRAME_FIELD: msgpack.packb({"id": "x"})}, "missing key 'camera'"),   # incomplete map
    ({FRAME_FIELD: msgpack.packb({"id": 5, "camera": "c", "seq": 1, "ts": 0.0, "height": 1, "width": 1,
                                  "encoding": "gray8", "data": b"x"})}, "'id' has type int"),
])
def test_bad_maps(fields: dict, message_part: str) -> None:
    with pytest.raises(DecodeError, match=message_part):
        parse_frame(fields)


def test_corrupt_jpeg() -> None:
    image = np.zeros((256, 1600), np.uint8)
    data = encode(image, "jpeg")
    msg = FrameMessage("x", "c", 0, 0.0, 256, 1600, "jpeg", data[: len(data) // 3])
    with pytest.raises(DecodeError):
        decode(msg)


def test_identity_of_garbage_is_safe() -> None:
    assert identity({FRAME_FIELD: b"\xc1"}) == ("", "", -1, 0.0)
    assert identity(None) == ("", "", -1, 0.0)
