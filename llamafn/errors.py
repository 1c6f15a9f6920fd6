"""The project's exceptions: every bad input raises one of these with a message that names the file,
key, shape or argument at fault (DESIGN.md, convention 10). The CLI prints the message, no traceback."""


class LlamafnError(Exception):
    """Base of every error llamafn raises on purpose."""


class ConfigError(LlamafnError, ValueError):
    """A model configuration (params.json, config.json, preset) is missing a field or is inconsistent."""


class ParamsError(LlamafnError, ValueError):
    """A params dict does not match its config: missing, unexpected or misshapen keys."""


class CheckpointError(LlamafnError, OSError):
    """A weight file is missing, truncated, corrupt or of an unknown format."""


class TokenizerError(LlamafnError, ValueError):
    """A tokenizer file cannot be read, or does not fit the model."""


class InputError(LlamafnError, ValueError):
    """A call got an out-of-range argument: token ids, prompt length, sampling parameters, shapes."""
