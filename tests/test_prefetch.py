"""Reading the weight files ahead of the loader: which files, in which order, all of their bytes, and when not."""

import pytest
from helpers.paths import TINY_WEIGHTS

from framepack.core.weights import required_components
from framepack.runtime import prefetch


def test_weight_files_are_every_checkpoint_in_loading_order():
    files = prefetch.weight_files(TINY_WEIGHTS, ("original", "f1"))
    components = required_components(("original", "f1"))
    owners = [next(c.name for c in components if path.parent == c.path(TINY_WEIGHTS)) for path in files]
    loaded = [c.name for c in components if any(c.path(TINY_WEIGHTS).glob("*.safetensors"))]
    assert list(dict.fromkeys(owners)) == loaded
    assert owners[-2:] == ["transformer_original", "transformer_f1"]
    assert set(files) == {p for c in components for p in c.path(TINY_WEIGHTS).glob("*.safetensors")}


def test_a_prefetch_reads_every_byte_once_per_folder(tmp_path):
    folder = tmp_path / "weights"
    for component in required_components(("f1",)):
        component.path(folder).parent.mkdir(parents=True, exist_ok=True)
        component.path(folder).symlink_to(component.path(TINY_WEIGHTS).resolve(), target_is_directory=True)
    files = prefetch.weight_files(folder, ("f1",))
    reading = prefetch.start(folder, ("f1",))
    bytes_read, seconds = reading.wait()
    assert bytes_read == sum(path.stat().st_size for path in files) and seconds >= 0
    assert prefetch.start(folder, ("f1",)) is reading


@pytest.mark.parametrize(
    ("total", "available", "reason"),
    [
        (10 * 2**30, 100 * 2**30, None),
        (10 * 2**30, None, None),
        (10 * 2**30, 12 * 2**30, "10.0 GiB of weights, 12.0 GiB of memory available"),
        (0, 100 * 2**30, "no weight files"),
    ],
)
def test_skipped_when_the_files_would_not_stay_in_memory(total, available, reason):
    found = prefetch.skip_reason(total, available)
    assert found == reason if reason is None else found.startswith(reason)


def test_a_folder_without_weights_is_not_prefetched(tmp_path):
    assert prefetch.start(tmp_path, ("original",)) is None


def test_a_bad_setting_never_stops_the_import(monkeypatch):
    # predict.py calls this before anything else: a bad variable is the engine's to report, later.
    monkeypatch.setenv("FRAMEPACK_MEMORY_MODE", "medium")
    assert prefetch.start_from_env() is None
