#!/usr/bin/env bash
# The whole test suite, on a fresh clone: fetches the shipped assets (tests on real data use
# them), installs the Python Parquet readers the interoperability test needs into a local venv,
# then runs every Rust test. CI runs exactly this (.ci/run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/fetch-assets.sh

# System packages the suite needs beyond Rust and python3 come from the distribution's mirrors
# (Debian/Ubuntu's apt, as root); elsewhere install them first and the suite uses them.
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "test.sh: needs $* (install them, or run as root on Debian/Ubuntu so apt can)" >&2
    exit 1
  fi
  echo "test.sh: installing $* (apt)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

venv="$root/target/pyreaders"
if ! "$venv/bin/python" -c "import pyarrow, duckdb, polars, tensorboard" 2>/dev/null; then
  # Debian's python3 makes venvs only with python3-venv (ensurepip).
  python3 -c "import ensurepip" 2>/dev/null || apt_install python3-venv
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    pyarrow==26.0.1 duckdb==2.0.1 polars==2.1.0 tensorboard==2.21.0
fi
export PATH="$venv/bin:$PATH"
export ASL_REQUIRE_PY_READERS=1
export ASL_REQUIRE_ASSETS=1
export ASL_ASSETS="$root/assets"

# Debian's chromium: the run page is opened in a real headless browser (tests/integration/page.rs).
command -v chromium >/dev/null || apt_install chromium
export ASL_REQUIRE_CHROMIUM=1

# A one-node Slurm cluster (installed from Debian's packages when missing) for the `asl submit`
# tests; stopped when the suite ends.
scripts/slurm-local.sh start "$root/target/slurm"
trap 'scripts/slurm-local.sh stop "$root/target/slurm"' EXIT
export SLURM_CONF="$root/target/slurm/slurm.conf"
export ASL_REQUIRE_SLURM=1

cargo test --locked "$@"
