"""The typed run config: sections, loading with overrides, and the rules checked at load."""

from crosscity.config.schema import Config, ConfigError, load_config, parse_override, save_config, to_dict

__all__ = ["Config", "ConfigError", "load_config", "parse_override", "save_config", "to_dict"]
