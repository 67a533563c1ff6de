"""Exit codes every part of crosscity agrees on (launchers, ranks, sbatch scripts)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # a config, data or command-line problem, reported in one line before anything runs
EXIT_REQUEUE = 75  # EX_TEMPFAIL: "checkpointed, requeue me" (a preempted city, a stopped run)
