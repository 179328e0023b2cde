import pandas as pd
import pytest

from transfer_rec.io.formats import FormatError, count_rows, read_table

FRAME = pd.DataFrame({"learner": ["a", "b", "c"], "course": ["x", "y", "z"], "score": [4, 5, 3]})


@pytest.mark.parametrize(
    "fmt,writer,delimiter",
    [
        ("csv", lambda f, p: f.to_csv(p, index=False), None),
        ("csv", lambda f, p: f.to_csv(p, index=False, sep=";"), ";"),
        ("tsv", lambda f, p: f.to_csv(p, index=False, sep="\t"), None),
        ("parquet", lambda f, p: f.to_parquet(p, index=False), None),
        ("jsonl", lambda f, p: f.to_json(p, orient="records", lines=True), None),
    ],
)
def test_every_format_reads_the_same_table_and_counts_rows(tmp_path, fmt, writer, delimiter):
    path = tmp_path / f"inter.{fmt}"
    writer(FRAME, path)
    table = read_table(path, fmt, delimiter)
    assert list(table.columns) == ["learner", "course", "score"]
    if fmt == "parquet":  # a typed format: numbers stay numbers, the rest is text
        assert table["score"].tolist() == [4, 5, 3] and table["learner"].tolist() == ["a", "b", "c"]
    else:
        assert table["score"].tolist() == ["4", "5", "3"], "native values of text formats arrive as text"
    assert count_rows(path, fmt) == 3


def test_recbole_headers_lose_their_types(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\t4\n")
    assert list(read_table(path, "recbole").columns) == ["user_id", "item_id", "rating"]
    assert count_rows(path, "recbole") == 1


def test_a_file_in_another_format_than_configured_is_refused(tmp_path):
    path = tmp_path / "inter.parquet"
    FRAME.to_csv(path, index=False)
    with pytest.raises(FormatError, match="not a readable Parquet file"):
        read_table(path, "parquet")
    bad = tmp_path / "inter.jsonl"
    bad.write_text('{"learner": "a"}\nnot json\n')
    with pytest.raises(FormatError, match="malformed JSON lines"):
        read_table(bad, "jsonl")


def test_to_numbers_reads_exactly_what_to_numeric_reads():
    from transfer_rec.io.formats import to_numbers

    cases = [
        ["4", "5", "10"],
        ["4", "+4", "04"],
        ["4", "4.5"],
        ["4", " 4"],
        ["1e3", "2"],
        ["4", None],
        ["x", "4"],
        ["9223372036854775808", "1"],
        [],
        ["-3", "0"],
    ]
    for values in cases:
        text = pd.Series(values, dtype=str)
        expected = pd.to_numeric(text, errors="coerce")
        got = to_numbers(text)
        pd.testing.assert_series_equal(got, expected, check_exact=True)
    numbers = pd.Series([1, 2, 3])
    assert to_numbers(numbers) is numbers


def test_a_header_that_names_a_column_twice_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.csv").write_text("user,item,rating,rating\nu1,i1,4,5\n")
    (tmp_path / "a.inter").write_text("u:token\ti:token\tu:float\nu1\ti1\t3\n")
    table = pa.table([pa.array(["u1"]), pa.array(["i1"]), pa.array(["x"])], names=["u", "i", "u"])
    pq.write_table(table, tmp_path / "a.parquet")
    for name, fmt, repeated in (("a.csv", "csv", "rating"), ("a.inter", "recbole", "u"), ("a.parquet", "parquet", "u")):
        with pytest.raises(FormatError, match=rf"{name}: the header names column\(s\) \['{repeated}'\]"):
            read_table(tmp_path / name, fmt)
    (tmp_path / "b.csv").write_text("user,item,rating\nu1,i1,4\n")
    assert list(read_table(tmp_path / "b.csv", "csv").columns) == ["user", "item", "rating"]
    # as the reader takes a header: after a byte-order mark and blank lines, split on a delimiter of two characters
    (tmp_path / "c.csv").write_text("\ufeff\nuser,user\n1,2\n", encoding="utf-8")
    (tmp_path / "d.dat").write_text("user::user::r\n1::2::3\n")
    for name, delimiter in (("c.csv", None), ("d.dat", "::")):
        with pytest.raises(FormatError, match=r"the header names column\(s\) \['user'\]"):
            read_table(tmp_path / name, "csv", delimiter)
    (tmp_path / "e.dat").write_text("user::item::r\n1::2::3\n")
    assert list(read_table(tmp_path / "e.dat", "csv", "::").columns) == ["user", "item", "r"]
    (tmp_path / "f.csv").write_text("user,item,,\n1,2,3,4\n")  # unnamed columns are not repeats
    assert len(read_table(tmp_path / "f.csv", "csv").columns) == 4
    # names that differ only in case: validation could not tell them apart
    (tmp_path / "g.csv").write_text("User,item,user\n1,2,3\n")
    pq.write_table(pa.table([pa.array(["u1"]), pa.array(["x"])], names=["TS", "ts"]), tmp_path / "g.parquet")
    for name, fmt, names in (("g.csv", "csv", "'User', 'user'"), ("g.parquet", "parquet", "'TS', 'ts'")):
        with pytest.raises(
            FormatError, match=rf"{name}: the header names columns \[{names}\] that differ only in case"
        ):
            read_table(tmp_path / name, fmt)


def test_a_header_that_cannot_be_read_is_the_files_fault(tmp_path):
    from transfer_rec.io.formats import header_names

    path = tmp_path / "x.csv"
    path.write_bytes(b"user,\xff\xfe,item\n1,2,3\n")
    with pytest.raises(FormatError, match=r"x\.csv: cannot read its header"):
        header_names(path, "csv")


@pytest.mark.parametrize(
    "text",
    [
        "user,item,rating\n1,2,5,\n3,4,1,\n",  # a delimiter at the end of every line
        "item,title,year\n1,Toy Story, The,1995\n2,Heat,1995\n",  # an unquoted delimiter inside the first title
    ],
)
def test_a_first_row_longer_than_the_header_is_refused_not_shifted(tmp_path, text):
    path = tmp_path / "export.csv"
    path.write_text(text)
    with pytest.raises(FormatError, match=r"export\.csv: its first data row has 4 fields, 1 more than the header's 3"):
        read_table(path, "csv")
    path.write_text("item,title,year\n1,Toy Story, The, Part Two,1995\n")
    with pytest.raises(FormatError, match=r"first data row has 5 fields, 2 more than the header's 3"):
        read_table(path, "csv")
    # quoted, the same value reads as it is
    path.write_text('item,title,year\n1,"Toy Story, The",1995\n')
    assert read_table(path, "csv").to_dict("records") == [{"item": "1", "title": "Toy Story, The", "year": "1995"}]


def test_json_lines_keep_each_value_as_the_file_writes_it(tmp_path):
    """A column with a missing value must not turn its numbers into floats: occupation 4 read as "4.0" missed its
    value map, and an id past 2**53 lost its last digits."""
    path = tmp_path / "users.jsonl"
    path.write_text(
        '{"uid": 12345678901234567891, "occupation": 4, "rating": 4.5, "ok": true, "zip": "02139"}\n'
        "\n"
        '{"uid": 2, "occupation": null, "rating": 3, "ok": false}\n'
    )
    table = read_table(path, "jsonl")
    assert table.astype(object).where(table.notna(), None).to_dict("records") == [
        {"uid": "12345678901234567891", "occupation": "4", "rating": "4.5", "ok": "true", "zip": "02139"},
        {"uid": "2", "occupation": None, "rating": "3", "ok": "false", "zip": None},
    ]
    assert count_rows(path, "jsonl") == 2
    path.write_text('{"uid": 1}\n["not", "an", "object"]\n')
    with pytest.raises(FormatError, match=r"users\.jsonl: malformed JSON lines: line 2 is not a JSON object"):
        read_table(path, "jsonl")
