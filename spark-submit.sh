#!/usr/bin/env bash
# spark-submit with poimatch's jars, Python and package attached.
#   local:   ./spark-submit.sh jobs/train.py --input data/train.csv
#   cluster: ./spark-submit.sh --master yarn --deploy-mode cluster jobs/match.py --input ...
# Options before the job file go to spark-submit; the rest go to the job. A --master,
# --driver-memory or --jars you give wins: the wrapper only fills what is missing.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv"
[ -x "$VENV/bin/spark-submit" ] || "$HERE/scripts/setup.sh"

submit_args=()
while [ $# -gt 0 ] && [[ "$1" == -* ]]; do
  case "$1" in
    --verbose|-v|--supervise|--*=*) submit_args+=("$1"); shift ;;
    *) submit_args+=("$1" "$2"); shift 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [spark-submit options] JOB.py [job options]" >&2; exit 2; }
job="$1"; shift

has() {
  local k
  for k in "${submit_args[@]+"${submit_args[@]}"}"; do
    [[ "$k" == "$1" || "$k" == "$1="* ]] && return 0
  done
  return 1
}
master="local[*]"
for ((i = 0; i < ${#submit_args[@]}; i++)); do
  case "${submit_args[$i]}" in
    --master) master="${submit_args[$((i + 1))]}" ;;
    --master=*) master="${submit_args[$i]#--master=}" ;;
  esac
done
extra=()
has --master || extra+=(--master "$master")
if [[ "$master" == local* ]] && ! has --driver-memory; then
  extra+=(--driver-memory "${POIMATCH_DRIVER_MEMORY:-6g}")
fi
# A local driver maps Spark's classes from the archive make setup builds
# (poimatch.runs.class_archive), in front of any --driver-java-options given, unless those
# choose class-data sharing themselves.
archive="$HERE/.jars/spark-classes.jsa"
if [[ "$master" == local* ]] && [ -f "$archive" ]; then
  cds="-XX:SharedArchiveFile=$archive -Xshare:auto -Xlog:cds=off,cds+dynamic=off"
  with_cds() {  # the given options with the archive in front, unless they choose CDS
    if [[ "$1" == *SharedArchiveFile* || "$1" == *ArchiveClassesAtExit* || "$1" == *-Xshare* ]]; then
      printf '%s' "$1"
    else
      printf '%s' "$cds $1"
    fi
  }
  if has --driver-java-options; then
    for ((i = 0; i < ${#submit_args[@]}; i++)); do
      arg="${submit_args[$i]}"
      if [[ "$arg" == --driver-java-options ]]; then
        submit_args[$((i + 1))]="$(with_cds "${submit_args[$((i + 1))]}")"
      elif [[ "$arg" == --driver-java-options=* ]]; then
        submit_args[$i]="--driver-java-options=$(with_cds "${arg#--driver-java-options=}")"
      fi
    done
  else
    extra+=(--driver-java-options "$cds")
  fi
fi
if ! has --jars; then
  jars=$(ls "$HERE"/.jars/*.jar 2>/dev/null | paste -sd, -)
  [ -n "$jars" ] || { echo "no jars in $HERE/.jars: run make setup" >&2; exit 1; }
  extra+=(--jars "$jars")
fi
if [[ "$master" != local* ]] && ! has --py-files; then
  # Ship the library to the executors; their Python environment must hold the pinned
  # dependencies (requirements.lock, e.g. the deploy/ image). A venv with setuptools>=77
  # and wheel (the image's) builds offline; otherwise pip fetches them into an isolated
  # build environment. The build's chatter is shown only when it fails.
  isolation=()
  if "$VENV/bin/python" -c 'import sys, setuptools, wheel
sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
    isolation=(--no-build-isolation)
  fi
  # Built from a fresh copy of what the wheel holds: an in-tree build reuses build/lib,
  # which keeps modules the package no longer has (a moved or deleted module would ship).
  build_log=$(mktemp)
  source_copy=$(mktemp -d)
  (cd "$HERE" && tar cf - --exclude='*.egg-info' --exclude=__pycache__ pyproject.toml \
    README.md lib) | tar xf - -C "$source_copy"
  if ! "$VENV/bin/pip" wheel --quiet --no-deps "${isolation[@]+"${isolation[@]}"}" \
      -w "$HERE/dist" "$source_copy" >"$build_log" 2>&1; then
    cat "$build_log" >&2; rm -rf "$build_log" "$source_copy"
    echo "could not build the poimatch wheel for --py-files" >&2; exit 1
  fi
  rm -rf "$build_log" "$source_copy"
  wheel=$(ls -t "$HERE"/dist/poimatch-*.whl | head -1)
  extra+=(--py-files "$wheel")
fi

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$VENV/bin/python}"
export GX_ANALYTICS_ENABLED=false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
cd "$HERE"
exec "$VENV/bin/spark-submit" "${extra[@]}" "${submit_args[@]+"${submit_args[@]}"}" \
  --conf spark.ui.showConsoleProgress=false --conf spark.log.level="${POIMATCH_LOG_LEVEL:-WARN}" \
  "$job" "$@"
