"""One error type for bad input: the CLI prints it as a single line and exits with code 2."""


class ConfigError(Exception):
    """Bad user input: names the key, the value given and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class DataMissingError(ConfigError):
    """A dataset that must be fetched first; the message names the fetch command."""

    def __init__(self, name: str, path):
        super().__init__("data", name, f"not present at {path}; run `lrlab data fetch {name}`")


def require(condition: bool, key: str, value, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)
