"""The request and its planning: inputs and validation, sections, controls, the variants' direction, the sampler's
math, progress, and the files a request reads and writes (images, videos, LoRA URLs, weight headers). No model is
loaded here.
"""
