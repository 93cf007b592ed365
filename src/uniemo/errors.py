"""The project's user-facing error type: the CLI prints its message as one line, without a traceback."""


class UniEmoError(Exception):
    """An error caused by the user's input (a path, a config key, a file), with a message that says what to do."""


class ConfigError(UniEmoError):
    """A configuration file or override that does not fit the schema."""


class DataError(UniEmoError):
    """A dataset, annotation or image that cannot be read as expected."""


class CheckpointError(UniEmoError):
    """A checkpoint directory that is missing files, holds another architecture, or holds unsafe weights."""


class MetricNetworkError(UniEmoError):
    """A metric's pretrained network (e.g. LPIPS' AlexNet) whose weights are not on this machine."""
