# Sourced by the scripts that build a cached Python venv (python-env.sh, nvidia-oracle-env.sh).
#
# venv_build NAME REQS VENV CHECK [PIP_ARGS...]
#   Builds VENV once from REQS (pip install PIP_ARGS -r REQS), then runs CHECK (a shell
#   command, with $PY set to the venv's python, run from a scratch folder) and marks the venv
#   complete for this REQS hash; prints the venv's python on stdout, everything else on
#   stderr. Concurrent first runs build once, one after the other. Needs `python3 -m venv`
#   (Debian: python3-venv; scripts/setup.sh installs it).
venv_build() {
  local name="$1" reqs="$2" venv="$3" check="$4"
  shift 4
  local hash py stamp
  hash="$(sha256sum "$reqs" | cut -c1-16)"
  py="$venv/bin/python"
  stamp="$venv/.complete-$hash"
  die() { echo "$name: $*" >&2; exit 1; }
  if [ ! -f "$stamp" ]; then
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    command -v flock >/dev/null && flock 9
  fi
  if [ ! -f "$stamp" ]; then
    command -v python3 >/dev/null || die "python3 not found: run scripts/setup.sh (Debian: apt-get install python3 python3-venv)"
    python3 - <<'PYEOF' || die "python3 -m venv is unusable (no venv/ensurepip module): run scripts/setup.sh (Debian: apt-get install python3-venv)"
import ensurepip, venv  # noqa: F401  (Debian splits both out into python3-venv)
PYEOF
    {
      echo "$name: building $venv"
      rm -rf "$venv"
      python3 -m venv "$venv" || die "python3 -m venv $venv failed: run scripts/setup.sh (Debian: apt-get install python3-venv)"
      "$py" -m pip install -q --disable-pip-version-check "$@" -r "$reqs" \
        || die "pip install -r $reqs failed (is the package registry reachable?)"
      # From a scratch folder: some packages write files where they are imported.
      (t="$(mktemp -d)"; cd "$t" && PY="$py" bash -c "$check"; rc=$?; rm -rf "$t"; exit $rc) \
        || die "the venv at $venv fails its check: $check"
      touch "$stamp"
    } >&2
  fi
  echo "$py"
}
