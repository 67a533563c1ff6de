"""`python -m crosscity ...` is the `crosscity` command."""

import sys

from crosscity.launch.cli import main

sys.exit(main())
