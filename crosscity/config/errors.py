"""The one error a config can raise: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value is not allowed; `rule` names the rule that refused it (rules.py), if any."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule
