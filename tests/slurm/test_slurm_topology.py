"""detect_topology under real srun and real mpiexec inside a Slurm job array."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers.launchers import layouts, probe, require_mpiexec
from tests.helpers.slurm import require_slurm, sbatch, wait_finished


def test_real_srun_in_a_job_array(tmp_path: Path) -> None:
    """2 array tasks (cities) x 2 srun tasks on 2 nodes: every (city, rank) appears exactly once."""
    require_slurm()
    script = probe(tmp_path)
    srun = f"srun {sys.executable} {script}"
    job = sbatch(
        "--array=0-1", "-N2", "--ntasks-per-node=1", "-o", "out_%a.txt", "--wrap", srun, cwd=tmp_path
    )
    states = wait_finished([f"{job}_0", f"{job}_1"], timeout_s=60)
    out = (tmp_path / "out_0.txt").read_text() + (tmp_path / "out_1.txt").read_text()
    assert {s.state for s in states.values()} == {"COMPLETED"}, out
    found = layouts(out)
    assert found == {(c, 2, r, 2) for c in range(2) for r in range(2)}


def test_real_mpiexec_inside_a_slurm_array(tmp_path: Path) -> None:
    """mpiexec in a job: Slurm's task is the per-node proxy, so PMI_RANK (not SLURM_PROCID) is the rank."""
    require_slurm()
    run = f"{require_mpiexec()} -n $SLURM_NTASKS {sys.executable} {probe(tmp_path)}"
    job = sbatch("--array=0-1", "-N1", "--ntasks-per-node=2", "-o", "out_%a.txt", "--wrap", run, cwd=tmp_path)
    states = wait_finished([f"{job}_0", f"{job}_1"], timeout_s=60)
    out = (tmp_path / "out_0.txt").read_text() + (tmp_path / "out_1.txt").read_text()
    assert {s.state for s in states.values()} == {"COMPLETED"}, out
    assert layouts(out) == {(c, 2, r, 2) for c in range(2) for r in range(2)}, out
