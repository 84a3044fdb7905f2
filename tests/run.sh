#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
#   bash tests/run.sh            # everything
#   bash tests/run.sh -m 'not slow'   # extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
# integration test hosts (tests/testhosts.sh): sshd, ssh/scp/ssh-keygen, ip, unshare, ps
missing=()
{ command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
{ command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; } || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ps >/dev/null 2>&1 || missing+=(procps)
# the rendered launch scripts are linted by tests/unit/test_render.py
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# the Slurm test cluster (tests/slurmhosts.sh): munge, slurmctld, slurmd, the Slurm client
[ -x /usr/sbin/slurmctld ] || command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
[ -x /usr/sbin/slurmd ] || command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
[ -x /usr/sbin/munged ] || command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
    >/dev/null
fi
python3 -m ruff check .
python3 -m mypy
# --durations=40: every run prints its 40 slowest test phases (where the 30-min budget goes);
# the "ci" hypothesis profile: every property runs, on fewer examples (tests/tools/examples.py)
python3 -m pytest --durations=40 --hypothesis-profile=ci "$@"
