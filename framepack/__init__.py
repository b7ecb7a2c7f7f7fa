"""FramePack image-to-video: the engine behind the Cog predictor and `python -m framepack predict`."""
