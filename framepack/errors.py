"""The one error type for bad input, shared by every module that checks a request (no dependencies)."""


class InvalidInput(ValueError):
    """A request input is missing, malformed or out of range. `name` is the API input's name (or the option)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"Invalid input '{name}': {message}")
        self.name = name
        self.message = message
