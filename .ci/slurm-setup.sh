#!/usr/bin/env bash
# CI: install the Debian Slurm packages (controller, node daemon, client, accounting) and bring up
# the one-host dev cluster that the @pytest.mark.slurm tests submit to. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "[slurm-setup] installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
"$here/slurm/dev-cluster.sh" up
