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
    ({}, "exactly one field 'f'"),                                          # entry without the field
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


# -- headers are read before any decoding ----------------------------------------------------------------------

def test_header_checks_refuse_huge_images_without_decoding() -> None:
    import struct
    import zlib

    from inspector.decode import image_header

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    assert image_header(png, "png") == (20000, 20000, 1, 8)
    with pytest.raises(DecodeError, match="20000x20000"):
        decode(FrameMessage("x", "c", 0, 0.0, 256, 1600, "png", png))
    sof = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xc0\x00\x0b\x08" \
        + struct.pack(">HH", 20000, 20000) + b"\x01\x01\x11\x00"
    assert image_header(sof, "jpeg") == (20000, 20000, 1, 8)


@pytest.mark.parametrize("encoding, data, words", [
    ("jpeg", b"", "unknown bytes"),                                          # empty payload
    ("png", b"", "unknown bytes"),
    ("jpeg", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is a PNG but encoding says jpeg"),  # bytes contradict encoding
    ("png", b"\xff\xd8\xff\xe0" + b"\x00" * 40, "is a JPEG but encoding says png"),
    ("jpeg", b"\xff\xd8\xff\xd9", "no frame header"),                     # a JPEG with no image in it
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00", "no IHDR"),
], ids=["empty jpeg", "empty png", "png as jpeg", "jpeg as png", "jpeg without image", "png without IHDR"])
def test_contradicting_or_empty_payloads(encoding: str, data: bytes, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        decode(FrameMessage("x", "c", 0, 0.0, 256, 1600, encoding, data))


def test_colour_frames_converted_16_bit_refused() -> None:
    import cv2

    gray = (np.random.default_rng(2).random((256, 1600)) * 255).astype(np.uint8)
    rgb = cv2.imencode(".png", np.stack([gray] * 3, axis=2))[1].tobytes()
    assert np.array_equal(decode(FrameMessage("x", "c", 0, 0.0, 256, 1600, "png", rgb)), gray)  # R = G = B
    deep = cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes()
    with pytest.raises(DecodeError, match="16-bit"):
        decode(FrameMessage("x", "c", 0, 0.0, 256, 1600, "png", deep))


@pytest.mark.parametrize("over, words", [
    ({"seq": 2**53}, "seq"), ({"seq": -1}, "seq"), ({"ts": float("nan")}, "ts"), ({"ts": -5.0}, "ts"),
    ({"id": ""}, "frame id"), ({"id": "x" * 257}, "frame id"), ({"camera": "c" * 129}, "camera"),
    ({"seq": True}, "'seq' has type bool"), ({"height": 0}, "frame size"),
])
def test_out_of_range_fields(over: dict, words: str) -> None:
    body = {"id": "x", "camera": "c", "seq": 1, "ts": 1.0, "height": 256, "width": 1600, "encoding": "gray8",
            "data": b"\x00"}
    with pytest.raises(DecodeError, match=words):
        parse_frame({FRAME_FIELD: msgpack.packb({**body, **over})})


def test_payload_limit_checked_before_unpacking() -> None:
    with pytest.raises(DecodeError, match="max_payload_bytes"):
        parse_frame({FRAME_FIELD: b"\x00" * 2000}, max_payload_bytes=1024)
    with pytest.raises(DecodeError, match="not msgpack"):  # a header claiming 2**32 map entries
        parse_frame({FRAME_FIELD: b"\xdf\xff\xff\xff\xff"})


def test_decode_pool_turns_any_exception_into_the_frames_error() -> None:
    from inspector.decode import DecodePool

    pool = DecodePool(2)
    image = np.zeros((256, 1600), np.uint8)
    good = FrameMessage("g", "c", 0, 0.0, 256, 1600, "jpeg", encode(image, "jpeg"))
    bad = FrameMessage("b", "c", 0, 0.0, 256, 1600, "jpeg", b"\xff\xd8\xff" + b"\x00" * 10)
    outs = [np.empty((256, 1600), np.uint8) for _ in range(3)]
    errors = pool.decode([good, bad, good], outs)
    pool.close()
    assert errors[0] is None and errors[2] is None and "jpeg" in errors[1]


def hostile_variants() -> list[dict[bytes, bytes]]:
    """Several hundred malformed entries from one good png frame: odd field names, the packed map cut at every
    offset of its head and at steps beyond, and seeded byte flips anywhere in it."""
    image = (np.random.default_rng(3).random((256, 1600)) * 40 + 100).astype(np.uint8)
    good = message(image, "png").pack()
    entries: list[dict[bytes, bytes]] = [{}, {b"": good}, {b" ": good}, {b"\xff\x00": good}, {b"F": good},
                                         {FRAME_FIELD: good, b"": b"1"}, {FRAME_FIELD: b""}]
    cuts = [*range(1, 160), *range(160, len(good), max(1, len(good) // 150))]
    entries += [{FRAME_FIELD: good[:n]} for n in cuts]
    rng = np.random.default_rng(4)
    for _ in range(300):
        data = bytearray(good)
        for at in rng.integers(0, len(data), int(rng.integers(1, 4))):
            data[at] = int(rng.integers(0, 256))
        entries.append({FRAME_FIELD: bytes(data)})
    entries += [{FRAME_FIELD: b"\xc1"}, {FRAME_FIELD: b"\x91" * 5000 + b"\x00"}, {FRAME_FIELD: b"\x81\x80\x01"}]
    return entries


def test_every_rejection_names_the_problem() -> None:
    from conftest import assert_names_problem

    from inspector.decode import DecodePool

    pool, out, texts = DecodePool(0), np.empty((256, 1600), np.uint8), []
    for fields in hostile_variants():
        try:
            texts.append(pool.decode([parse_frame(fields)], [out])[0])
        except DecodeError as exc:
            texts.append(str(exc))
    pool.close()
    rejected = [t for t in texts if t is not None]
    assert len(rejected) > 400  # most variants are rejected; a flip inside the pixels may still decode
    for text in rejected:
        assert_names_problem(text, "hostile entry")
