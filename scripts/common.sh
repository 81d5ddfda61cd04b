# Shared by the scripts in this folder: paths, and how to run Gradle on this machine.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INFERBRIDGE_VENV:-$ROOT/.venv}"
GRADLE_VERSION="$(sed -n 's#.*gradle-\([0-9.]*\)-bin.zip#\1#p' "$ROOT/gradle/wrapper/gradle-wrapper.properties")"

# ./gradlew when its Gradle distribution is already on this machine; otherwise a system Gradle.
# (The wrapper downloads Gradle from outside the package registries, which some machines can't
# reach; bootstrap installs Debian's gradle package there.)
gradle_cmd() {
  local dists="${GRADLE_USER_HOME:-$HOME/.gradle}/wrapper/dists/gradle-$GRADLE_VERSION-bin"
  if compgen -G "$dists/*/gradle-$GRADLE_VERSION/bin/gradle" >/dev/null; then
    echo "$ROOT/gradlew"
  elif command -v gradle >/dev/null; then
    command -v gradle
  else
    return 1
  fi
}

gradle_run() {
  local gradle
  gradle="$(gradle_cmd)" || { echo "Gradle is not installed; run scripts/bootstrap first" >&2; return 1; }
  (cd "$ROOT" && "$gradle" --no-daemon --quiet --console=plain "$@")
}

log() { printf '==> %s\n' "$*" >&2; }

# A TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
