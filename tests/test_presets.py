"""Presets in the user's config folder, and the settings stored in a video we made."""

import pytest
import torch

from framepack.core.video import write_mp4
from framepack.errors import InvalidInput
from framepack.serving.presets import FILE_INPUTS, PresetStore, default_presets_file, settings_from_video


def test_presets_are_saved_loaded_and_deleted_without_files(tmp_path):
    store = PresetStore(tmp_path / "presets.json")
    store.save(" calm ", {"prompt": "a calm sea", "steps": 7, "input_image": "/home/me/photo.png", "other": 1})
    store.save("storm", {"prompt": "a storm"})
    assert store.names() == ["calm", "storm"]
    assert store.load("calm") == {"prompt": "a calm sea", "steps": 7}  # files and unknown names are not settings
    assert PresetStore(tmp_path / "presets.json").load("storm") == {"prompt": "a storm"}  # on disk
    store.delete("calm")
    assert store.names() == ["storm"] and not list(tmp_path.glob("*.partial"))
    with pytest.raises(InvalidInput, match="'preset': no preset named 'calm'"):
        store.load("calm")
    with pytest.raises(InvalidInput, match="give the preset a name"):
        store.save("  ", {})
    assert set(FILE_INPUTS) == {"input_image", "section_images", "end_image", "input_video"}


def test_the_presets_file_is_in_the_users_config_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_presets_file() == tmp_path / "framepack" / "presets.json"


def test_settings_come_back_from_a_video_and_a_foreign_video_is_refused(tmp_path):
    frames = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    ours = write_mp4(frames, tmp_path / "ours.mp4", 16, {"request": {"prompt": "x", "seed": 9, "input_image": "a.png"}})
    assert settings_from_video(ours) == {"prompt": "x", "seed": 9}
    foreign = write_mp4(frames, tmp_path / "foreign.mp4", 16)
    with pytest.raises(InvalidInput, match="'video': foreign.mp4 holds no FramePack settings"):
        settings_from_video(foreign)
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(InvalidInput, match="'--from': could not read notes.mp4 as an MP4"):
        settings_from_video(tmp_path / "notes.mp4", "--from")


def test_a_broken_presets_file_is_reported_not_overwritten(tmp_path):
    path = tmp_path / "presets.json"
    path.write_text("{not json")
    store = PresetStore(path)
    assert store.names() == []  # the page still loads
    with pytest.raises(InvalidInput, match="is not a presets file"):
        store.save("x", {"prompt": "y"})
    assert path.read_text() == "{not json"
