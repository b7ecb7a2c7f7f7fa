"""The service as predict.py runs it, in a process of its own: where its outputs live and when they go."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.paths import TINY_WEIGHTS
from helpers.requests import tiny_request

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys
from framepack.serving.service import FramePackService
service = FramePackService.setup()
output = service.predict({**json.loads(sys.argv[1]), "input_image": __import__("pathlib").Path(sys.argv[2])})
print("OUTPUT", output, flush=True)
"""


def test_the_default_output_folder_is_removed_when_the_process_exits(tmp_path):
    request = {k: v for k, v in tiny_request(total_video_length_seconds=0.4).items() if k != "input_image"}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEPACK_")}
    environ.update({"TMPDIR": str(tmp_path), "FRAMEPACK_WEIGHTS": str(TINY_WEIGHTS)})
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(request), str(tiny_request()["input_image"])],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = Path(result.stdout.split("OUTPUT ", 1)[1].strip())
    assert output.parent.parent == tmp_path and output.parent.name.startswith("framepack-outputs-")
    assert not output.parent.exists()  # the MP4 was there, and its folder went at exit
