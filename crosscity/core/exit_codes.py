"""The exit codes of every crosscity process, in one place (the sbatch templates default to these
values and generated scripts export them: launch/slurm/plan.py; a test keeps them equal)."""

EXIT_OK = 0
EXIT_FAILED = 1  # a rank failed, Slurm refused a job, a dataset failed its check
EXIT_BAD_INPUT = 2  # a bad config, command line or host: one line on stderr, nothing started
EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed after the requeue signal, requeue this city
