#!/usr/bin/env bash
# poimatch's JVM helper (deploy/jvm/src, see PreparedPlans.java): compiled against the Spark
# jars of the virtualenv into <jars>/poimatch-jvm.jar, which local Spark drivers load with the
# other jars (poimatch.session.find_jars). Offline: the JDK's javac and jar only.
#   scripts/build_jvm.sh [VENV] [JARS_DIR]      (defaults: .venv .jars)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
OUT="${2:-.jars}"
SPARK_JARS="$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
mapfile -t SOURCES < <(find deploy/jvm/src -name '*.java' | sort)
javac --release 17 -d "$BUILD" -cp "$SPARK_JARS/*" "${SOURCES[@]}"
mkdir -p "$OUT"
jar --create --file "$OUT/poimatch-jvm.jar" -C "$BUILD" .
