"""FramePack image-to-video: the engine behind the Cog predictor and `python -m framepack predict`.

The package is layered (README, "How it works"): `errors`, `logs` and `config` at the top, then `core`, `models`,
`runtime` and `serving`. The flat module names of earlier versions (`framepack.request`, `framepack.service`,
`framepack.pipeline`, ...) still import, as the same module objects as their layered paths, so code written
against them keeps working; new code imports the layered paths.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Each flat name of earlier versions, and the module it now is.
_FLAT_NAMES = {
    **{name: f"core.{name}" for name in ("continuation", "controls", "downloads", "frames", "planner", "progress")},
    **{name: f"core.{name}" for name in ("request", "sampler", "teacache", "variants", "video", "weights")},
    **{name: f"models.{name}" for name in ("attention", "float8", "lora")},
    **{name: f"runtime.{name}" for name in ("acceleration", "compilation", "compile_cache", "conditioning")},
    **{name: f"runtime.{name}" for name in ("decoding", "memory", "outputs", "pipeline", "prefetch", "residency")},
    **{name: f"runtime.{name}" for name in ("sequence_parallel", "streaming", "tiled_decode", "transformer")},
    **{name: f"runtime.{name}" for name in ("vae_acceleration",)},
    **{name: f"serving.{name}" for name in ("cli", "engine", "parallel", "presets", "previews", "service", "studio")},
}


class _FlatNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `framepack.<flat name>` as the module of its layer (imported when first asked for)."""

    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in _FLAT_NAMES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_FLAT_NAMES[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass  # the layered module ran when it was imported


sys.meta_path.append(_FlatNames())
