"""The one exception type bad input raises.

Every message is a single line that names the offending key and what is allowed, because the CLI prints
it as is (``error: <message>``) instead of a traceback.
"""


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""
