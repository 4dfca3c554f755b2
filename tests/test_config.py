"""Config and videos-table validation: clear messages naming the file and the field."""

from __future__ import annotations

import pytest
import yaml

from sipec_models.config import ConfigError, load_config, load_videos, validate_config


def test_default_config_is_valid(repo):
    config = load_config(repo / "config/config.yaml")
    assert config["segmentation"]["method"] == "classical"
    assert config["chunks"]["size"] > 0


def test_defaults_are_filled():
    config = validate_config({})
    assert config["tracking"]["method"] == "greedy"
    assert config["segmentation"]["classical"]["polarity"] == "auto"


def test_typo_names_field_and_suggests(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"tracking": {"methd": "greedy"}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "tracking.methd" in message and "did you mean 'method'" in message


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"chunks\.size must be of type integer, got 'big'"):
        validate_config({"chunks": {"size": "big"}})


def test_bad_enum_names_field():
    with pytest.raises(ConfigError, match=r"tracking\.method must be one of"):
        validate_config({"tracking": {"method": "magic"}})


def test_invalid_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("chunks: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def write_table(path, rows, header="id\tpath\tn_animals"):
    path.write_text(header + "\n" + "\n".join("\t".join(map(str, r)) for r in rows) + "\n")
    return path


def test_videos_table_ok(tmp_path, small_video):
    table = load_videos(write_table(tmp_path / "v.tsv", [("a", small_video, 2)], "id\tpath\tn_animals"))
    assert table.loc["a", "n_animals"] == 2


def test_videos_missing_column(tmp_path, small_video):
    with pytest.raises(ConfigError, match="missing column.*n_animals"):
        load_videos(write_table(tmp_path / "v.tsv", [("a", small_video)], "id\tpath"))


def test_videos_comma_separated_hint(tmp_path, small_video):
    path = tmp_path / "v.tsv"
    path.write_text(f"id,path,n_animals\na,{small_video},2\n")
    with pytest.raises(ConfigError, match="tab-separated"):
        load_videos(path)


def test_videos_duplicate_ids(tmp_path, small_video):
    with pytest.raises(ConfigError, match="duplicate video id.*: a"):
        load_videos(write_table(tmp_path / "v.tsv", [("a", small_video, 1), ("a", small_video, 1)]))


def test_videos_bad_count_names_line(tmp_path, small_video):
    with pytest.raises(ConfigError, match=r"line 3: column 'n_animals' must be a positive integer, got 'two'"):
        load_videos(write_table(tmp_path / "v.tsv", [("a", small_video, 1), ("b", small_video, "two")]))


def test_videos_bad_id(tmp_path, small_video):
    with pytest.raises(ConfigError, match="column 'id'"):
        load_videos(write_table(tmp_path / "v.tsv", [("bad id/with slash", small_video, 1)]))


def test_videos_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"video 'a'.*nope\.mp4: video file does not exist"):
        load_videos(write_table(tmp_path / "v.tsv", [("a", tmp_path / "nope.mp4", 1)]))


def test_videos_unreadable_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 50)
    with pytest.raises(ConfigError, match=r"video 'a'.*bad\.mp4: cannot be opened"):
        load_videos(write_table(tmp_path / "v.tsv", [("a", bad, 1)]))


def test_videos_producible_files_exempt(tmp_path):
    future = tmp_path / "future.mp4"
    table = load_videos(write_table(tmp_path / "v.tsv", [("a", future, 1)]), producible={str(future)})
    assert list(table.index) == ["a"]


def test_schema_matches_option_classes():
    """Every option the segmenter and tracker accept is in the schema, and no other."""
    from dataclasses import fields

    from sipec_models.config import _load_schema
    from sipec_models.segmentation.classical import ClassicalConfig
    from sipec_models.social import SocialConfig
    from sipec_models.tracking import TrackingConfig

    props = _load_schema("config.schema.yaml")["properties"]
    assert set(props["segmentation"]["properties"]["classical"]["properties"]) == {f.name for f in fields(ClassicalConfig)}
    assert set(props["tracking"]["properties"]) == {f.name for f in fields(TrackingConfig)}
    defaults = validate_config({})
    assert ClassicalConfig.from_dict(defaults["segmentation"]["classical"]) == ClassicalConfig()
    assert TrackingConfig.from_dict(defaults["tracking"]) == TrackingConfig()
    assert set(props["social"]["properties"]) - {"enabled"} == {f.name for f in fields(SocialConfig)}
    assert SocialConfig.from_dict(defaults["social"]) == SocialConfig()
