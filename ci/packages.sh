#!/usr/bin/env bash
# Makes sure the packages of ci/packages.txt that the given parts need are
# present; with no part given, every line of the list.
#
#   ci/packages.sh [PART...]      e.g. ci/packages.sh rust python
#
# Debian packages: as root, the missing ones are installed (one apt-get
# update, then one apt-get install of exactly those); otherwise the command
# to install them is printed and the script exits 1. Cargo subcommands are
# installed with `cargo install --locked` (into ~/.cargo/bin, no root needed).
# Each missing package is named with the tests that need it, so a missing
# tool fails here instead of skipping or failing obscurely later.
set -euo pipefail
list="$(cd "$(dirname "$0")" && pwd)/packages.txt"
parts=("$@")

# wanted FIELD: whether a line whose parts column is FIELD serves a requested part.
wanted() {
  local field=",$1," p
  if [ ${#parts[@]} -eq 0 ]; then return 0; fi
  for p in "${parts[@]}"; do
    case $field in *",$p,"*) return 0 ;; esac
    # "all" is every part of ./test.sh, not .ci/run's own bootstrap ("ci").
    if [ "$p" != ci ]; then
      case $field in *,all,*) return 0 ;; esac
    fi
  done
  return 1
}

deb_present() {
  local status
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) || return 1
  case $status in ii*) return 0 ;; *) return 1 ;; esac
}

cargo_present() {
  cargo "${1#cargo-}" --version >/dev/null 2>&1
}

# Reads the list into missing_deb / missing_cargo, with a line per package
# saying who needs it.
scan() {
  missing_deb=() missing_cargo=() notes=()
  local kind name for rest
  while read -r kind name for rest; do
    case $kind in '' | '#'*) continue ;; esac
    if ! wanted "$for"; then continue; fi
    rest=${rest#\#}
    case $kind in
      deb) if deb_present "$name"; then continue; fi; missing_deb+=("$name") ;;
      cargo) if cargo_present "$name"; then continue; fi; missing_cargo+=("$name") ;;
      *) echo "$list: unknown kind '$kind' (package $name)" >&2; exit 2 ;;
    esac
    notes+=("  $kind $name ($for):$rest")
  done <"$list"
}

scan
if [ ${#missing_deb[@]} -eq 0 ] && [ ${#missing_cargo[@]} -eq 0 ]; then
  echo "prerequisites for ${*:-every part}: all present (ci/packages.txt)"
  exit 0
fi
echo "missing prerequisites (ci/packages.txt):" >&2
printf '%s\n' "${notes[@]}" >&2

if [ ${#missing_deb[@]} -gt 0 ]; then
  if ! command -v dpkg-query >/dev/null; then
    echo "not a Debian system: install the equivalents of: ${missing_deb[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "not root, so not installing them; run:" >&2
    echo "  sudo apt-get install ${missing_deb[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing_deb[@]}"
fi

if [ ${#missing_cargo[@]} -gt 0 ]; then
  if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup) first, then run this again" >&2
    exit 1
  fi
  for name in "${missing_cargo[@]}"; do
    cargo install --locked "$name"
  done
fi

# Whatever is still missing now could not be installed: say what, and stop.
scan
if [ ${#missing_deb[@]} -gt 0 ] || [ ${#missing_cargo[@]} -gt 0 ]; then
  echo "still missing after installing:" >&2
  printf '%s\n' "${notes[@]}" >&2
  exit 1
fi
echo "prerequisites for ${*:-every part}: installed what was missing"
