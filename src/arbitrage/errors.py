"""Errors with messages meant for the user (printed as one line by the CLI)."""


class ArbitrageError(Exception):
    """Base class: bad input, a missing model, a server that stays down."""


class ConfigError(ArbitrageError):
    """A run was configured in a way that cannot work (e.g. router policy without a router). `option`: the
    setting at fault (e.g. "threshold"), when one is, so that a server can name the request field;
    `field_message`: the same message worded for a server's request (naming fields, not command-line flags)."""

    def __init__(self, message: str, option: str | None = None, field_message: str | None = None):
        super().__init__(message)
        self.option = option
        self.field_message = field_message

    def for_request(self) -> str:
        return self.field_message or str(self)


class DataError(ArbitrageError):
    """A dataset file or record is malformed; the message names the file, line and field."""


class ModelLoadError(ArbitrageError):
    """A model id or path could not be loaded."""


class BackendError(ArbitrageError):
    """A model server could not be reached or kept failing."""
