"""The config's former single module, kept as an import path so code written against it (and branches
in flight) keeps working; new code imports `crosscity.config`. Nothing is defined here."""

from crosscity.config import *  # noqa: F403
from crosscity.config import __all__  # noqa: F401
