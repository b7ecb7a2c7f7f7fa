"""Named presets of a request's settings, in one JSON file, and the settings stored in a video we made.

A preset is a mapping of API input names to JSON values: every input but the files (images), which are the
user's material rather than settings. The file lives in the user's config folder
(`$XDG_CONFIG_HOME/framepack/presets.json`, default `~/.config/framepack/presets.json`) and is replaced
atomically on every change.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from ..core.request import EARLIER_INPUTS, INPUT_SPECS, SECRET_INPUTS, with_step_cache
from ..core.video import read_mp4_metadata, video_read_errors
from ..errors import InvalidInput

FILE_INPUTS = tuple(name for name, spec in INPUT_SPECS.items() if spec.type in (Path, list))
# Tokens are not settings: never written to the presets file.
SETTINGS = tuple(name for name in INPUT_SPECS if name not in FILE_INPUTS + EARLIER_INPUTS + SECRET_INPUTS)


def default_presets_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "framepack" / "presets.json"


def settings_of(values: dict[str, Any]) -> dict[str, Any]:
    """The settings among `values` (input name -> value): every known input but the files, an earlier
    `use_teacache` stated as `step_cache`."""
    values = with_step_cache(values)
    return {name: values[name] for name in SETTINGS if name in values}


class PresetStore:
    """Presets by name in one JSON file: {"presets": {name: {input: value}}}."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else default_presets_file()
        self._lock = threading.Lock()  # the page's events run concurrently; each change reads, edits, writes

    def names(self) -> list[str]:
        try:
            return sorted(self._read())
        except InvalidInput:
            return []  # the page still loads; saving or loading says what is wrong

    def load(self, name: str) -> dict[str, Any]:
        presets = self._read()
        if name not in presets:
            raise InvalidInput("preset", f"no preset named {name!r}")
        return presets[name]

    def save(self, name: str, values: dict[str, Any]) -> None:
        name = name.strip()
        if not name:
            raise InvalidInput("preset", "give the preset a name")
        with self._lock:
            presets = self._read()
            presets[name] = settings_of(values)
            self._write(presets)

    def delete(self, name: str) -> None:
        with self._lock:
            presets = self._read()
            presets.pop(name, None)
            self._write(presets)

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            presets = json.loads(self.path.read_text()).get("presets", {})
        except (ValueError, AttributeError) as error:
            raise InvalidInput("preset", f"{self.path} is not a presets file ({error}); move it away") from None
        return presets

    def _write(self, presets: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_text(json.dumps({"presets": presets}, indent=2, sort_keys=True))
        os.replace(partial, self.path)


def stored_request(path: Path, name: str = "video") -> dict[str, Any]:
    """The request stored in the metadata of an MP4 this project made (files by name only), as JSON values.

    Raises InvalidInput naming input `name` for a file that is not such an MP4.
    """
    path = Path(path)
    try:
        request = read_mp4_metadata(path).get("request")
    except video_read_errors() as error:
        raise InvalidInput(name, f"could not read {path.name} as an MP4 ({error})") from None
    if not isinstance(request, dict):
        raise InvalidInput(name, f"{path.name} holds no FramePack settings (not made by this project?)")
    return request


def settings_from_video(path: Path, name: str = "video") -> dict[str, Any]:
    """The settings of the request that made the MP4 at `path` (seed included), from its metadata.

    The one reader of a video's settings: the studio's "reuse settings" and `predict --from` both use it.
    """
    return settings_of(stored_request(path, name))
