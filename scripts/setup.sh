#!/usr/bin/env bash
# Bootstrap a fresh machine: virtualenv, pinned Python packages, JVM jars (once, via Maven).
# Idempotent: re-running it is fast and changes nothing. After it, no job touches the network.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.poimatch-setup"

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not installed ($2)" >&2; exit 1; }; }
need java "Java 17: apt-get install openjdk-17-jre-headless"
need mvn "Maven: apt-get install maven"
need javac "a JDK 17 (for poimatch's JVM helper): apt-get install openjdk-17-jdk-headless"

"$PYTHON" - <<'PY' || { echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
installed=0
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ requirements.lock -nt "$STAMP" ]; then
  installed=1
  "$VENV/bin/pip" install --quiet --upgrade pip
  # the wheel build of cluster submits (spark-submit.sh) runs offline with these
  "$VENV/bin/pip" install --quiet setuptools==84.2.1 wheel==0.48.0
  # pip compiles every module as it installs: keep it. This machine sets
  # PYTHONDONTWRITEBYTECODE=1, so no process writes bytecode later and the install's is
  # the only cache (with --no-compile a fresh clone's setup took 143 s instead of 192 s
  # and its suite 18 min 57 s instead of 17 min 27 s, half an hour apart: the tests that
  # start Python processes 15-35 % slower)
  "$VENV/bin/pip" install --quiet -c requirements.lock -e '.[local,dev]'
fi

# JVM jars: Delta for Spark 4.1, resolved through Maven into a project-local folder.
if ! ls .jars/delta-spark_*.jar >/dev/null 2>&1 || ! ls .jars/delta-storage-*.jar >/dev/null 2>&1; then
  mkdir -p .jars
  mvn --batch-mode --quiet -f deploy/jvm/pom.xml dependency:copy-dependencies \
      -DoutputDirectory="$PWD/.jars" -DexcludeTransitive=true
fi
# poimatch's JVM helper (deploy/jvm/src): one class that copies a prepared query's plan in one
# call, compiled against the virtualenv's Spark jars into .jars/poimatch-jvm.jar (seconds).
HELPER=.jars/poimatch-jvm.jar
if [ ! -f "$HELPER" ] || [ "$installed" = 1 ] || [ -n "$(find deploy/jvm/src -name '*.java' -newer "$HELPER")" ]; then
  scripts/build_jvm.sh "$VENV" .jars
fi
# The Spark driver's class archive (poimatch.runs.class_archive): local JVMs start without
# parsing Spark's classes again. Rebuilt with the packages or the jars (~1 minute).
ARCHIVE=.jars/spark-classes.jsa
if [ ! -f "$ARCHIVE" ] || [ "$installed" = 1 ] || [ -n "$(find .jars -name '*.jar' -newer "$ARCHIVE")" ]; then
  "$VENV/bin/python" -m poimatch.runs.class_archive .jars
fi
touch "$STAMP"
echo "setup: ok ($("$VENV/bin/python" --version), jars: $(ls .jars | tr '\n' ' '))"
