"""The operator's commands refuse what they cannot do in one line, before touching anything."""

import pytest


def test_the_airflow_commands_refuse_outside_the_environment_make_sets(monkeypatch):
    from transfer_rec import cli

    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    for command in ("init", "run", "airflow-ui"):
        with pytest.raises(SystemExit, match=rf"`transfer-rec {command}` needs the Airflow environment `make` sets"):
            cli.main([command])
