from __future__ import annotations

import base64
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from appzoo.tables import (
    AtomicWriter,
    Schema,
    TableDataset,
    TableError,
    decode_image_base64,
    encode_image_base64,
    read_table,
    sequence_columns,
)

SCHEMA = Schema.parse("idx:str:1,text:str:1,score:float:1,ids:int:3")


def _noise(mode: str, size=(13, 9), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode)


def _b64(img: Image.Image, fmt: str, **kwargs) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------------------------------------- schema


def test_schema_parse_and_lookup():
    assert SCHEMA.names == ("idx", "text", "score", "ids")
    assert Schema.parse("a:str,b:int:1").names == ("a", "b")
    assert SCHEMA.index("text") == 1
    with pytest.raises(ValueError, match=r"--first_sequence=txt: no such column .* did you mean text\?"):
        sequence_columns(SCHEMA, "txt")
    assert sequence_columns(SCHEMA, "text", "idx") == ("text", "idx")
    with pytest.raises(ValueError, match="--first_sequence is required"):
        sequence_columns(SCHEMA, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:str:1,b", r"entry 2 'b' is not name:type:length"),
        ("a:blob:1", "type must be one of str, int, float"),
        ("a:str:0", "length must be an integer >= 1"),
        ("a:str:1,a:int:1", "column 'a' appears twice"),
        ("", "--input_schema is empty"),
    ],
)
def test_schema_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Schema.parse(text)


def test_schema_ignores_empty_items_such_as_the_tutorials_trailing_comma():
    # EasyNLP's tutorial writes --input_schema=idx:str:1,text:str:1,
    assert Schema.parse("idx:str:1,text:str:1,").names == ("idx", "text")
    assert Schema.parse("idx:str:1, ,text:str:1,,imgbase64:str:1").names == ("idx", "text", "imgbase64")
    with pytest.raises(ValueError, match=r"entry 3 'text' is not name:type:length"):
        Schema.parse("idx:str:1,,text,")
    with pytest.raises(ValueError, match="--input_schema is empty"):
        Schema.parse(", ,")


# ------------------------------------------------------------------------------------------------ rows


def test_read_table_types_line_numbers_crlf_bom_blank_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(
        "\ufeffidx\ttext\tscore\tids\r\n".encode()
        + "1\t你好 world\t0.5\t1,2,3\r\n".encode()
        + b"\n"
        + b"2\t\t-1e-3\t4,5,6\n"
    )
    rows = list(read_table(path, SCHEMA, skip_first_line=True))
    assert [r.line_no for r in rows] == [2, 4]
    assert rows[0].values == {"idx": "1", "text": "你好 world", "score": 0.5, "ids": [1, 2, 3]}
    assert rows[1]["text"] == "" and rows[1]["score"] == pytest.approx(-1e-3)
    assert rows[0].file == str(path)
    assert [r.values for r in read_table(f"file://{path}", SCHEMA, skip_first_line=True)] == [r.values for r in rows]


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        (b"3\tx\t0.5", 4, "expected 4 tab-separated columns"),
        (b"3\tx\t0.5\t1,2,3\textra", 5, "expected 4 tab-separated columns"),
        (b"3\tx\tabc\t1,2,3", 3, "score: expected float, got 'abc'"),
        (b"3\tx\t1\t1,2", 4, "ids: expected 3 comma-separated int values, got 2"),
        (b"3\t\xff\xfe\t1\t1,2,3", 2, "invalid UTF-8"),
        (b"3\tx\ry\t1\t1,2,3", 2, "a carriage return inside a cell"),
        (b"\t", 3, "expected 4 tab-separated columns"),
        (b"   ", 2, "expected 4 tab-separated columns"),
    ],
)
def test_bad_rows_name_file_line_column(tmp_path, line, column, message):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"1\ta\t0.1\t1,2,3\n2\tb\t0.2\t1,2,3\n" + line + b"\n")
    rows = read_table(path, SCHEMA)
    assert next(rows).line_no == 1 and next(rows).line_no == 2
    with pytest.raises(TableError, match=message) as info:
        next(rows)
    assert (info.value.file, info.value.line, info.value.column) == (str(path), 3, column)
    assert str(info.value).startswith(f"{path}, line 3, column {column}: ")


def test_table_dataset_random_access_and_pickling(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"h\th\th\th\n" + b"".join(f"{i}\tt{i}\t{i}.5\t{i},{i},{i}\n".encode() for i in range(7)))
    dataset = TableDataset(path, SCHEMA, skip_first_line=True, transform=lambda row: (row.line_no, row["idx"]))
    assert len(dataset) == 7
    assert dataset[3] == (5, "3") and dataset[-1] == (8, "6")
    clone = pickle.loads(pickle.dumps(TableDataset(path, SCHEMA, skip_first_line=True)))
    expected = [r.values for r in read_table(path, SCHEMA, skip_first_line=True)]
    assert [clone[i].values for i in reversed(range(7))] == expected[::-1]
    with pytest.raises(IndexError):
        dataset[7]


# ---------------------------------------------------------------------------------------------- images


def test_png_roundtrip_urlsafe_and_missing_padding():
    img = _noise("RGB", size=(31, 17))
    text = encode_image_base64(img)
    assert np.array_equal(np.asarray(decode_image_base64(text)), np.asarray(img))
    raw = base64.b64decode(text)
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in urlsafe or "_" in urlsafe
    decoded = decode_image_base64(urlsafe)
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(img))
    assert np.array_equal(np.asarray(decode_image_base64("data:image/png;base64," + text)), np.asarray(img))


def test_jpeg_and_cmyk_jpeg():
    img = _noise("RGB")
    text = _b64(img, "JPEG", quality=90)
    reference = Image.open(io.BytesIO(base64.b64decode(text)))
    assert np.array_equal(np.asarray(decode_image_base64(text)), np.asarray(reference.convert("RGB")))
    cmyk = decode_image_base64(_b64(_noise("CMYK"), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.size == (13, 9)


def test_grayscale_and_palette_to_rgb():
    gray = _noise("L")
    decoded = np.asarray(decode_image_base64(_b64(gray, "PNG")))
    assert decoded.shape == (9, 13, 3)
    for channel in range(3):
        assert np.array_equal(decoded[..., channel], np.asarray(gray))
    palette_img = _noise("RGB").quantize(colors=8)
    colors = np.array(palette_img.getpalette()[: 3 * 8]).reshape(8, 3)
    expected = colors[np.asarray(palette_img)]
    assert np.array_equal(np.asarray(decode_image_base64(_b64(palette_img, "PNG"))), expected)


def test_rgba_is_composited_on_white():
    rgba = _noise("RGBA")
    array = np.asarray(rgba).astype(np.float64)
    alpha = array[..., 3:] / 255.0
    expected = array[..., :3] * alpha + 255.0 * (1 - alpha)
    decoded = np.asarray(decode_image_base64(_b64(rgba, "PNG"))).astype(np.float64)
    assert np.abs(decoded - expected).max() <= 1.0


def test_sixteen_bit_grayscale_is_rescaled():
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    img = Image.fromarray(values)
    decoded = np.asarray(decode_image_base64(_b64(img, "PNG")))
    assert decoded[0, :, 0].tolist() == [0, 1, 255, 128]


def test_pixel_limit_is_enforced_before_decoding():
    text = _b64(Image.new("RGB", (100, 60)), "PNG")
    with pytest.raises(TableError, match="100x60 pixels exceeds the limit of 5000 pixels") as info:
        decode_image_base64(text, file="t.tsv", line=7, column=3, max_pixels=5000)
    assert str(info.value).startswith("t.tsv, line 7, column 3: ")
    assert decode_image_base64(text, max_pixels=6000).size == (100, 60)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda png: base64.b64encode(png[: len(png) // 2]).decode(), "unreadable image"),
        (lambda png: base64.b64encode(b"not an image at all").decode(), "unreadable image"),
        (lambda png: "abc$def", "invalid base64"),
        (lambda png: "abcde", "invalid base64: truncated"),
        (lambda png: "", "empty image"),
    ],
)
def test_corrupt_images_name_the_cell(make, message):
    png = base64.b64decode(_b64(_noise("RGB", size=(64, 64)), "PNG"))
    with pytest.raises(TableError, match=message) as info:
        decode_image_base64(make(png), file="x.tsv", line=2, column=3)
    assert (info.value.file, info.value.line, info.value.column) == ("x.tsv", 2, 3)


# ---------------------------------------------------------------------------------------------- writes


def test_atomic_writer_publishes_on_success(tmp_path):
    target = tmp_path / "sub" / "out.tsv"
    with AtomicWriter(target) as out:
        out.write_row(["1", "a b", 3])
        assert not target.exists()
    assert target.read_text() == "1\ta b\t3\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.tsv"]


@pytest.mark.parametrize("bad", ["a\tb", "a\nb", "a\rb"])
def test_atomic_writer_rejects_tab_newline_and_keeps_old_file(tmp_path, bad):
    target = tmp_path / "out.tsv"
    target.write_text("old\n")
    with pytest.raises(ValueError, match="column 2: value contains"):
        with AtomicWriter(target) as out:
            out.write_row(["ok", "fine"])
            out.write_row(["ok", bad])
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def test_read_table_hands_bad_rows_to_on_error(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("1\ta\n2\n3\tc\n", encoding="utf-8")
    schema = Schema.parse("idx:str:1,text:str:1")
    errors = []
    rows = list(read_table(path, schema, on_error=errors.append))
    assert [r.line_no for r in rows] == [1, 3]
    assert len(errors) == 1 and errors[0].line == 2 and "expected 2 tab-separated columns" in str(errors[0])


def test_every_non_empty_line_is_a_row_or_a_reject_in_both_readers(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"1\ta\t0.1\t1,2,3\n\t\n2\tb\t0.2\t1,2,3\n\n3\tc\r\t0.3\t1,2,3\r\n4\td\t0.4\t1,2,3\r\n")
    rejects = []
    rows = list(read_table(path, SCHEMA, on_error=rejects.append))
    assert [r.line_no for r in rows] == [1, 3, 6]
    assert [(e.line, e.column) for e in rejects] == [(2, 3), (5, 2)]
    dataset = TableDataset(path, SCHEMA)
    assert len(dataset) == 5  # lines 1, 2, 3, 5, 6: only the empty line 4 is not a row
    with pytest.raises(TableError, match="carriage return"):
        dataset.row(3)


def test_huge_images_decode_reduced_and_ordinary_ones_exactly(tmp_path):
    big = _noise("RGB", size=(2048, 1536), seed=3)
    jpeg = _b64(big, "JPEG", quality=90)
    full = decode_image_base64(jpeg)
    reduced = decode_image_base64(jpeg, reduce_to=128)
    assert full.size == (2048, 1536)
    assert reduced.size == (256, 192)  # DCT scaling at 1/8: still at least 128 on each side
    png = _b64(_noise("RGBA", size=(1024, 1024), seed=4), "PNG")
    assert decode_image_base64(png, reduce_to=200).size == (205, 205)  # reduced by 5 after decoding
    assert decode_image_base64(png, reduce_to=200).size[0] >= 200
    ordinary = _b64(_noise("RGB", size=(512, 512), seed=5), "JPEG")
    assert np.array_equal(np.asarray(decode_image_base64(ordinary, reduce_to=256)),
                          np.asarray(decode_image_base64(ordinary)))  # under 4x: decoded exactly
