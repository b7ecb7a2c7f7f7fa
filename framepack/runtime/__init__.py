"""Running the models: placement in GPU memory (resident, held or streamed), acceleration and compilation, sequence
parallelism's attention, the transformer's forward in stages, conditioning, the section loop, decoding and the MP4
of a generation.
"""
