import os
import re

import pytest
from pydantic import ValidationError

from transfer_rec.config import ConfigError, load_config


def test_config_roles_and_per_target_gate_floors_resolve():
    config = load_config(overrides={"gate": {"targets": {config_target(): {"min_retention": 0.1}}}})
    assert all(p.role == "target" for p in config.targets) and all(p.role == "source" for p in config.sources)
    assert config.gate.for_target(config_target()).min_retention == 0.1
    assert config.gate.for_target("elsewhere").min_retention == config.gate.min_retention


def config_target() -> str:
    return load_config().targets[0].name


def test_overrides_are_validated():
    assert load_config(overrides={"training": {"epochs_finetune": 3}}).training.epochs_finetune == 3
    with pytest.raises(ConfigError, match="epochs_finetune"):
        load_config(overrides={"training": {"epochs_finetune": 0}})
    with pytest.raises(ConfigError, match="strategy"):
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
    assert [p.name for p in config.sources] == ["ml-1m", "family", "drama", "ml-1m-copy"]
    for p in raw["platforms"]:
        p["role"], p["sources"], p["new_users"] = "target", None, None
    with pytest.raises(ValidationError, match="at least one platform must have role 'source'"):
        type(load_config()).model_validate(raw)


def test_targets_learn_from_their_family_of_sources():
    config = load_config()
    assert [p.name for p in config.sources_of("action")] == ["family", "drama"]
    assert [p.name for p in config.sources_of("ml-100k")] == ["ml-1m"]
    assert config.source_families(["ml-100k", "action"]) == {("ml-1m",): ["ml-100k"], ("family", "drama"): ["action"]}
    assert config.source_families(["action"]) == {("family", "drama"): ["action"]}
    assert config.new_users_share("action") == 0.3 and config.new_users_share("ml-100k") == 0.0
    raw = config.model_dump()
    # a target without `sources` learns from every source
    raw["platforms"][1]["sources"] = None
    assert [p.name for p in type(config).model_validate(raw).sources_of("ml-100k")] == ["ml-1m", "family", "drama"]


@pytest.mark.parametrize(
    ("platform", "change", "message"),
    [
        (1, {"sources": ["books"]}, r"platform ml-100k: sources \['books'\] must name one or more source platforms"),
        (1, {"sources": ["action"]}, r"sources \['action'\] must name one or more source platforms"),
        (1, {"sources": []}, "must name one or more source platforms"),
        (0, {"new_users": 0.2}, "platform ml-1m: `sources`, `new_users` and `training` are settings of a target"),
        (2, {"training": {"epochs_finetune": 0}}, "platform action: training: .*epochs_finetune"),
        (2, {"training": {"no_such_setting": 1}}, "platform action: training: .*no_such_setting"),
        (3, {"embedded": None}, "platform family: `world` needs `embedded`"),
        (4, {"world": {"target": "drama", "seed": 1}}, "share one linked world export and must give the same"),
    ],
)
def test_families_and_worlds_are_checked(platform, change, message):
    raw = load_config().model_dump()
    raw["platforms"][platform].update(change)
    with pytest.raises(ValidationError, match=message):
        type(load_config()).model_validate(raw)


def test_the_schedule_in_a_few_words():
    from transfer_rec.config import ScheduleConfig
    from transfer_rec.stages.pipeline import schedule_label

    assert schedule_label(ScheduleConfig()) == "schedule: @weekly UTC or new data"
    assert schedule_label(ScheduleConfig(training="0 3 * * 1", on_new_data=False)) == "schedule: 0 3 * * 1 UTC"
    assert schedule_label(ScheduleConfig(training=None, on_new_data=True)) == "schedule: new data"
    assert schedule_label(ScheduleConfig(training=None, on_new_data=False)) == "schedule: manual only"


def test_a_target_has_its_own_training_settings_and_a_family_shares_its_pretraining():
    config = load_config()
    ml_100k = config.training_of("ml-100k")  # make run's budget: one encoder, 10 pretraining epochs
    assert (ml_100k.encoders, ml_100k.epochs_pretrain) == (1, 10)
    assert ml_100k.model_copy(update={"encoders": 2, "epochs_pretrain": 15}) == config.training
    action = config.training_of("action")
    assert (action.encoders, action.epochs_finetune) == (1, 20) and action.lam == config.training.lam
    assert config.for_target("action").training == action and config.for_target("action").gate == config.gate
    assert config.pretraining_of(["action"]).epochs_pretrain == 8
    raw = config.model_dump()
    twin = {**raw["platforms"][2], "name": "action-two", "training": {"encoders": 2}}
    with pytest.raises(ValidationError, match=r"targets \['action', 'action-two'\] share one pretrained model"):
        type(config).model_validate({**raw, "platforms": [*raw["platforms"], twin]})
    # settings that only fine-tuning reads may differ within a family
    twin["training"] = {**raw["platforms"][2]["training"], "epochs_finetune": 5}
    assert type(config).model_validate({**raw, "platforms": [*raw["platforms"], twin]}).training_of("action-two")


def test_a_family_is_a_target_and_its_sources():
    config = load_config()
    assert [p.name for p in config.family("ml-100k").platforms] == ["ml-1m", "ml-100k"]
    assert [p.name for p in config.family("action").platforms] == ["action", "family", "drama"]
    assert config.family("action").sources_of("action") == config.sources_of("action")


def test_a_runs_training_override_reaches_every_target_over_its_own_setting():
    # a manual run's params (epochs_finetune, seed, ...) are overrides of the `training` section
    config = load_config(overrides={"training": {"epochs_finetune": 3}})
    assert config.training_of("action").epochs_finetune == 3 and config.training_of("ml-100k").epochs_finetune == 3
    assert config.training_of("action").encoders == 1, "the target's other settings stay"
    assert load_config().training_of("action").epochs_finetune == 20


def test_a_target_stating_the_default_agrees_with_one_that_leaves_it_out():
    raw = load_config().model_dump()
    twin = {**raw["platforms"][2], "name": "action-two", "training": {**raw["platforms"][2]["training"], "seed": 2022}}
    # refused before: the two compared what they wrote, not what they would pretrain with
    config = type(load_config()).model_validate({**raw, "platforms": [*raw["platforms"], twin]})
    assert config.training_of("action-two") == config.training_of("action")


def test_the_engine_is_pandas_unless_the_config_says_spark_and_the_environment_may_name_the_master(monkeypatch):
    monkeypatch.delenv("TRANSFER_REC_SPARK_MASTER", raising=False)
    config = load_config()
    assert config.engine == "pandas" and config.spark.master_url() == "local[*]"
    spark = load_config(overrides={"engine": "spark", "spark": {"master": "local[2]"}})
    assert spark.engine == "spark" and spark.spark.master_url() == "local[2]"
    monkeypatch.setenv("TRANSFER_REC_SPARK_MASTER", "spark://spark-master:7077")
    assert spark.spark.master_url() == "spark://spark-master:7077"
    with pytest.raises(ConfigError, match="engine"):
        load_config(overrides={"engine": "dask"})


def test_a_spark_master_spark_would_refuse_is_refused_at_load_not_minutes_into_a_run(monkeypatch):
    monkeypatch.delenv("TRANSFER_REC_SPARK_MASTER", raising=False)
    for master in (
        "local",
        "local[*]",
        "local[4]",
        "local[2,3]",
        "spark://a:7077,b:7077",
        "yarn",
        "k8s://https://k:6443",
    ):
        assert load_config(overrides={"spark": {"master": master}}).spark.master_url() == master
    for master in ("lcoal[2]", "local[0]", "spark://", "spark://spark-master", "http://spark:7077", ""):
        with pytest.raises(ConfigError, match=rf"spark.master: '{re.escape(master)}' is not a Spark"):
            load_config(overrides={"spark": {"master": master}})
    monkeypatch.setenv("TRANSFER_REC_SPARK_MASTER", "spark:/spark-master:7077")
    with pytest.raises(ValueError, match=r"\$TRANSFER_REC_SPARK_MASTER 'spark:/spark-master:7077' is not a Spark"):
        load_config().spark.master_url()
    # the pipeline on Spark refuses it at load, before a task starts a session with it
    with pytest.raises(ConfigError, match=r"\$TRANSFER_REC_SPARK_MASTER 'spark:/spark-master:7077' is not a Spark"):
        load_config(overrides={"engine": "spark"})


def test_a_config_that_cannot_be_read_is_a_config_error_naming_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=rf"config {tmp_path / 'none.yaml'} cannot be read: No such file"):
        load_config(tmp_path / "none.yaml")
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("platforms:\n\t- name: x\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: (.|\n)*line 2, column 1"):
        load_config(tabbed)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- name: x\n")
    with pytest.raises(ConfigError, match="expected settings by name"):
        load_config(listed)


def test_a_run_key_never_names_the_folder_above():
    from transfer_rec.stages.pipeline import check_run_key, run_key_from

    assert check_run_key("v1.2_x") == "v1.2_x"
    for bad in (".", "..", "...", "", "a/b", "x" * 101, ".versions", "latest.json", "failures.log"):
        with pytest.raises(ValueError, match="is not a run key"):
            check_run_key(bad)
    assert check_run_key(run_key_from("manual__2026-12-06T21:26:08+00:00")) == "manual__2026-12-06T21_26_08_00_00"


def test_a_dry_run_with_a_gate_override_is_refused_before_anything_runs():
    from transfer_rec.stages.pipeline import plan

    with pytest.raises(ValueError, match="a dry run never promotes"):
        plan({"dry_run": True, "gate_override": "promote"}, airflow_run_id="dry-and-promote")


def test_a_misspelt_param_is_refused_instead_of_ignored():
    from transfer_rec.stages.pipeline import plan

    # Airflow passes a conf key the DAG does not declare through as a param: "dryrun" would run for real
    with pytest.raises(ValueError, match=r"params \['dryrun'\]: not params of this pipeline"):
        plan({"dryrun": True}, airflow_run_id="misspelt")


def test_a_gate_override_names_its_targets_when_there_are_several():
    from transfer_rec.stages.pipeline import plan

    # the shipped config has several targets: one field set by mistake would override every target's gate
    with pytest.raises(ValueError, match="name the targets it applies to"):
        plan({"gate_override": "promote"}, airflow_run_id="override-all")


def test_ages_in_years_need_one_label_per_age_group():
    raw = load_config().model_dump()
    for platform in raw["platforms"]:  # ages in years on ml-100k only: the other maps would name the labels first
        platform["value_maps"].pop("age", None)
    raw["platforms"][1]["value_maps"] = {**raw["platforms"][1]["value_maps"], "age": "age_years"}
    type(load_config()).model_validate(raw)  # the shipped vocabulary has one label per group
    raw["vocabularies"]["age"] = raw["vocabularies"]["age"][:-1]
    with pytest.raises(ValidationError, match=r"platform ml-100k: value map age_years for 'age' .* needs 7 distinct"):
        type(load_config()).model_validate(raw)


def test_a_value_map_onto_values_outside_the_vocabulary_is_a_config_error():
    raw = load_config().model_dump()
    raw["value_maps"]["ml_1m_occupation"] = {**raw["value_maps"]["ml_1m_occupation"], "0": "astronaut"}
    with pytest.raises(ValidationError, match=r"map 'ml_1m_occupation' for 'occupation' maps onto \['astronaut'\]"):
        type(load_config()).model_validate(raw)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["pull"].update(partitioned=["interactions", "users"]), r"partitioned"),
        (lambda p: p["drift"].update(volume_factor=0.5), r"volume_factor 0.5 must be 0 \(off\) or at least 1"),
        (
            lambda p: p["columns"]["interactions"].update(rating="ratting"),
            r"platform ml-1m: columns.interactions maps onto \['ratting'\], not column\(s\) of the unified",
        ),
        (lambda p: p["columns"]["items"].update(genre="genre"), r"columns.items maps onto \['genre'\]"),
        (lambda p: p.update(rating_scale=(5.0, 1.0)), r"rating_scale \[5.0, 1.0\] must be \[lowest, highest\]"),
        (lambda p: p["value_maps"].update(ocupation="ml_1m_occupation"), r"value_maps for \['ocupation'\]"),
        (lambda p: p["value_maps"].update(occupation="age_years"), r"age_years is for the age column only"),
    ],
)
def test_platform_settings_that_would_be_ignored_or_refuse_every_batch_are_config_errors(change, message):
    raw = load_config().model_dump()
    change(raw["platforms"][0])
    with pytest.raises(ValidationError, match=message):
        type(load_config()).model_validate(raw)


def test_stage_time_limits_change_only_the_stages_given_and_stay_limits():
    config = load_config(overrides={"runtime": {"stage_timeout_minutes": {"pull": 60}}})
    assert config.runtime.stage_timeout("pull") == 60 and config.runtime.stage_timeout("pretrain") == 120
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['fine_tune'\]"):
        load_config(overrides={"runtime": {"stage_timeout_minutes": {"fine_tune": 240}}})
    with pytest.raises(ConfigError, match="at least 1 minute"):
        load_config(overrides={"runtime": {"stage_timeout_minutes": {"finetune": 0}}})


def test_gate_floors_must_name_a_target():
    with pytest.raises(ConfigError, match=r"gate.targets: \['ml-1m'\] name no target platform"):
        load_config(overrides={"gate": {"targets": {"ml-1m": {"min_retention": 0.1}}}})


def test_the_columns_a_platform_may_map_onto_are_unified_columns_or_identities():
    from transfer_rec.config import MAPPABLE, PROFILE_MAPPED
    from transfer_rec.schema.unified import INTERACTION_COLUMNS, ITEM_COLUMNS, PROFILE_FIELDS, USER_COLUMNS
    from transfer_rec.stages.unify import IDENTITY_COLUMNS

    assert MAPPABLE["interactions"] <= set(INTERACTION_COLUMNS)
    assert MAPPABLE["users"] <= set(USER_COLUMNS) | set(IDENTITY_COLUMNS)
    assert MAPPABLE["items"] <= set(ITEM_COLUMNS)
    assert set(PROFILE_FIELDS) == PROFILE_MAPPED


def test_each_item_grid_setting_is_bounded_as_the_single_one_is():
    # drop_p 1 crashed fine-tuning with a ZeroDivisionError; lam 0 solved a singular Gram into weights of ~1e15
    for setting in ((0.5, 100.0, 1.0), (0.5, 0.0, 0.25), (-1.0, 100.0, 0.25)):
        with pytest.raises(ConfigError, match="item_grid"):
            load_config(overrides={"training": {"item_grid": [list(setting)]}})
    assert load_config(overrides={"training": {"item_grid": [[0.5, 100.0, 0.5]]}}).training.item_grid


def test_a_platform_whose_ratings_unify_onto_another_scale_is_retrained_once():
    import hashlib
    import json

    from transfer_rec.stages.pipeline import inputs_fingerprint

    def before(config) -> str:  # the fingerprint of a model trained before ratings were unified onto 1-5
        settings = config.model_dump(mode="json", exclude={"schedule": True, "runtime": {"stage_timeout_minutes"}})
        payload = json.dumps({"data": hashes, "config": settings}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    hashes = {"ml-1m": {"ratings.dat": "ab"}}
    config = load_config()  # every platform on 1-5: its champions stay the champions of the same inputs
    assert inputs_fingerprint(hashes, config) == before(config)
    raw = config.model_dump()
    raw["platforms"][0]["rating_scale"] = (1.0, 10.0)
    tenfold = type(config).model_validate(raw)
    assert inputs_fingerprint(hashes, tenfold) != before(tenfold)
    # the machine's settings change how fast a run goes, not what it trains on: the same inputs, no retrain
    machine = load_config(overrides={"runtime": {"workers": 1, "torch_threads": 1, "device": "cuda"}})
    assert inputs_fingerprint(hashes, machine) == inputs_fingerprint(hashes, config)
    seeded = load_config(overrides={"training": {"seed": 99}})
    assert inputs_fingerprint(hashes, seeded) != inputs_fingerprint(hashes, config)


def test_a_file_name_an_address_would_cut_short_is_a_config_error():
    raw = load_config().model_dump()
    raw["platforms"][0]["files"]["interactions"] = "ratings#2024.csv"
    raw["platforms"][0]["location"] = "exports/ml-1m"
    type(load_config()).model_validate(raw)  # a local file of that name is read as named
    raw["platforms"][0]["location"] = "s3://bucket/ml-1m"
    with pytest.raises(ValidationError, match="'#' and '\\?' cannot be part"):
        type(load_config()).model_validate(raw)


def test_a_file_location_with_a_host_part_is_refused_at_the_config():
    from transfer_rec.config import location_allowed

    # file://exports/etc is /etc to every reader
    assert not location_allowed("file://exports/etc", ["exports"])
    assert location_allowed(f"file://{os.path.realpath('exports')}/ml-1m", ["exports"])


def test_a_target_promoted_then_failed_at_publish_says_both_on_the_pipeline_run():
    from transfer_rec.stages.pipeline import outcome_line

    assert outcome_line("a", {"promoted": True, "version": "7"}, "publish") == "a: promoted v7, then failed at publish"
    assert outcome_line("a", None, "finetune") == "a: failed at finetune"
    assert outcome_line("a", {"promoted": False, "version": "8"}, None) == "a: not promoted"


def test_training_and_ingest_on_one_schedule_are_refused_where_a_platform_pulls_by_interval():
    raw = load_config().model_dump()
    raw["schedule"] = {"training": "@daily", "on_new_data": True, "ingest": "@daily"}
    type(load_config()).model_validate(raw)  # snapshot platforms only: nothing pulls by interval
    raw["platforms"][1]["pull"] = {**raw["platforms"][1]["pull"], "mode": "incremental"}
    with pytest.raises(
        ValidationError, match=r"training \('@daily'\) and ingest \('@daily'\) run at the same times.*\['ml-100k'\]"
    ):
        type(load_config()).model_validate(raw)
    raw["schedule"]["ingest"] = "0 0 * * *"  # the same time written as a cron expression
    with pytest.raises(ValidationError, match="run at the same times"):
        type(load_config()).model_validate(raw)
