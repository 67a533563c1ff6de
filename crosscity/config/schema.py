"""The config's former single module, kept only for the modules being rewritten now (train/trainer.py,
train/wan/sync.py, launch/local/launcher.py); everything else imports `crosscity.config`."""

from crosscity.config import Config, ConfigError, WanConfig, load_config

__all__ = ["Config", "ConfigError", "WanConfig", "load_config"]
