"""The operator's commands refuse what they cannot do in one line, before touching anything."""

import pytest


def test_the_airflow_commands_refuse_outside_the_environment_make_sets(monkeypatch):
    from transfer_rec import cli

    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    for command in ("init", "run", "airflow-ui"):
        with pytest.raises(SystemExit, match=rf"`transfer-rec {command}` needs the Airflow environment `make` sets"):
            cli.main([command])


def test_a_config_mistake_is_one_message_naming_the_file_platform_and_field(tmp_path, monkeypatch):
    from transfer_rec import cli
    from transfer_rec.config import DEFAULT_CONFIG

    text = DEFAULT_CONFIG.read_text()
    broken = tmp_path / "pipeline.yaml"
    # the second platform (ml-100k) gets a reversed rating scale, the third (action) a delimiter that is no text
    ml_100k = text.index("- name: ml-100k")
    broken.write_text(
        text[:ml_100k]
        + text[ml_100k:]
        .replace("rating_scale: [1, 5]", "rating_scale: [5, 1]", 1)
        .replace("new_users: 0.3\n", "new_users: 0.3\n    delimiter: 7\n", 1)
    )
    monkeypatch.setenv("TRANSFER_REC_CONFIG", str(broken))
    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(tmp_path / "var"))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["exports"])
    message = str(stopped.value.code)
    assert message.startswith(f"config {broken} is not valid (2 problems):"), message
    assert "platform ml-100k: " in message and "platform action: delimiter: " in message, message
    assert "platforms.1" not in message and "platforms.2" not in message and "Value error" not in message
    assert not (tmp_path / "var").exists(), "nothing was written before the config was read"


def test_rollback_of_a_platform_that_is_no_target_and_serve_with_a_bad_body_limit_are_one_line(tmp_path, monkeypatch):
    from transfer_rec import cli

    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SystemExit, match=r"cannot roll back nosuch: not a target platform of the config .* nor a"):
        cli.main(["rollback", "nosuch"])
    assert not list(tmp_path.rglob("*.db")), "refused without creating a registry"
    monkeypatch.setenv("TRANSFER_REC_MAX_BODY_BYTES", "1MiB")
    with pytest.raises(SystemExit, match=r"TRANSFER_REC_MAX_BODY_BYTES='1MiB': expected a positive number of bytes"):
        cli.main(["serve", "--model", "models:/nothing@champion"])


def test_a_setup_command_that_hangs_is_stopped_and_named(tmp_path):
    from transfer_rec import cli

    marker = tmp_path / "still-running"
    with pytest.raises(SystemExit, match=r"airflow db migrate did not finish in 0.5 s \(stopped\)"):
        cli._quiet(["sh", "-c", f"sleep 3; touch {marker}"], "airflow db migrate", timeout=0.5)
    import time

    time.sleep(3.5)
    assert not marker.exists(), "the hanging command was killed, not left running"
