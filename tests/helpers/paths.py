"""Where the test fixtures are: the tiny real-architecture weights, images and golden cases (docs/FIXTURES.md)."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TINY_WEIGHTS = FIXTURES / "tiny-weights"
IMAGES = FIXTURES / "images"
GOLDEN = FIXTURES / "golden"
START_IMAGE = IMAGES / "start_100x140.png"
END_IMAGE = IMAGES / "end_100x140.png"
