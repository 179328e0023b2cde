import pytest
from pydantic import ValidationError

from transfer_rec.config import load_config


def test_config_roles_and_per_target_gate_floors_resolve():
    config = load_config(overrides={"gate": {"targets": {config_target(): {"min_retention": 0.1}}}})
    assert all(p.role == "target" for p in config.targets) and all(p.role == "source" for p in config.sources)
    assert config.gate.for_target(config_target()).min_retention == 0.1
    assert config.gate.for_target("elsewhere").min_retention == config.gate.min_retention


def config_target() -> str:
    return load_config().targets[0].name


def test_overrides_are_validated():
    assert load_config(overrides={"training": {"epochs_finetune": 3}}).training.epochs_finetune == 3
    with pytest.raises(ValidationError, match="epochs_finetune"):
        load_config(overrides={"training": {"epochs_finetune": 0}})
    with pytest.raises(ValidationError, match="strategy"):
        load_config(overrides={"training": {"strategy": "magic"}})


def test_training_changes_in_code_are_validated_too():
    from transfer_rec.stages.train import with_training

    config = load_config()
    changed = with_training(config, seed=5, source_replay=0.0)
    assert (changed.training.seed, changed.training.source_replay) == (5, 0.0)
    assert config.training.seed != 5, "the given config is left as it was"
    with pytest.raises(ValidationError, match="item_combine"):
        with_training(config, item_combine="median")


def test_platform_file_names_cannot_escape_the_location(tmp_path):
    config = load_config()
    raw = config.model_dump()
    raw["platforms"][0]["files"]["interactions"] = "../../etc/passwd"
    with pytest.raises(ValidationError, match="plain name"):
        type(config).model_validate(raw)


def test_several_sources_are_allowed_and_at_least_one_is_required():
    raw = load_config().model_dump()
    second = {**raw["platforms"][0], "name": "ml-1m-copy", "location": "exports/ml-1m-copy"}
    config = type(load_config()).model_validate({**raw, "platforms": [*raw["platforms"], second]})
    assert [p.name for p in config.sources] == ["ml-1m", "ml-1m-copy"]
    raw["platforms"][0]["role"] = "target"
    with pytest.raises(ValidationError, match="at least one platform must have role 'source'"):
        type(load_config()).model_validate(raw)


def test_the_schedule_in_a_few_words():
    from transfer_rec.config import ScheduleConfig
    from transfer_rec.stages.pipeline import schedule_label

    assert schedule_label(ScheduleConfig()) == "schedule: @weekly UTC or new data"
    assert schedule_label(ScheduleConfig(training="0 3 * * 1", on_new_data=False)) == "schedule: 0 3 * * 1 UTC"
    assert schedule_label(ScheduleConfig(training=None, on_new_data=True)) == "schedule: new data"
    assert schedule_label(ScheduleConfig(training=None, on_new_data=False)) == "schedule: manual only"
