"""The engine and its entry points: start-up and the one path for a request (`engine`), the Cog service, the command
line, the web studio and its presets and previews, and the worker processes of several GPUs.
"""
