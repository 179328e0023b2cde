from transfer_rec.io.state import StateLayout
from transfer_rec.ops.alerts import failure_line, record_failure


def test_failure_line_is_one_line_with_platform_error_and_log():
    error = ValueError("platform village: batch b failed validation:\n  - file a.txt, column x: rule\n  - and more")
    line = failure_line("transfer_rec", "validate", "village", "manual__1", 1, error, "http://x/log")
    assert "\n" not in line
    assert line == (
        "FAILED transfer_rec.validate[village] run=manual__1 attempt=1: ValueError: platform village: "
        "batch b failed validation: file a.txt, column x: rule; and more | log: http://x/log"
    )
    assert "validate[" not in failure_line("transfer_rec", "validate", "-1", "r", 1, None, None)


def test_record_failure_appends(tmp_path):
    layout = StateLayout(tmp_path)
    record_failure("FAILED a", layout)
    record_failure("FAILED b", layout)
    lines = (tmp_path / "reports" / "failures.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["FAILED a", "FAILED b"]


def test_an_error_without_a_message_or_an_enormous_one_still_gives_one_bounded_line():
    from transfer_rec.ops.alerts import MAX_MESSAGE, failure_line

    empty = failure_line("transfer_rec", "finetune", "ml-100k", "r1", 1, StopIteration(), None)
    assert "StopIteration: (the error carries no message)" in empty and "\n" not in empty
    huge = failure_line("transfer_rec", "unify", None, "r1", 1, ValueError("x" * 500_000), None)
    assert len(huge) < MAX_MESSAGE + 200 and "500,000 characters" in huge


def test_a_failures_file_that_cannot_be_written_does_not_raise(tmp_path, caplog):
    layout = StateLayout(tmp_path)
    (tmp_path / "reports").write_text("a file where the reports folder should be")
    record_failure("FAILED c", layout)
    assert "FAILED c" in caplog.text and "could not append the failure" in caplog.text
