#!/usr/bin/env bash
# The Bicep compiler for this project, and the infra check built on it.
#
#   tools/bicep.sh check       lint, build and format-check every infra/**/*.bicep; exit 1 on any
#                              error, warning or formatting difference
#   tools/bicep.sh path        print the path of the compiler in use (installing it first if needed)
#   tools/bicep.sh ARGS...     run the compiler with ARGS, e.g. `tools/bicep.sh build infra/main.bicep --stdout`
#
# Which compiler: $BICEP if set, else `bicep` on PATH, else the one `az bicep` manages, else Bicep
# $BICEP_VERSION from the NuGet package Azure.Bicep.CommandLine.<rid>, restored with `dotnet restore` into
# .tools/bicep/ (git-ignored) on first use. No internet beyond NuGet is needed, so the same script
# works on a developer machine, in CI and offline sandboxes that only reach the package registries.
# Set BICEP_USE_NUGET=1 to skip the PATH/az lookup and use exactly the pinned version.
set -euo pipefail

BICEP_VERSION="0.49.2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.tools/bicep"

die() { echo "tools/bicep.sh: $*" >&2; exit 1; }

nuget_rid() {
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=osx ;;
    *) die "no Bicep NuGet package for OS $(uname -s); install bicep yourself and set BICEP=/path/to/bicep" ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no Bicep NuGet package for CPU $(uname -m); install bicep yourself and set BICEP=/path/to/bicep" ;;
  esac
  echo "$os-$arch"
}

install_from_nuget() {
  local rid package exe
  rid="$(nuget_rid)"
  package="azure.bicep.commandline.$rid"
  exe="$cache/packages/$package/$BICEP_VERSION/tools/bicep"
  if [[ -x "$exe" ]]; then echo "$exe"; return; fi

  command -v dotnet >/dev/null || die "bicep is not installed and dotnet is not on PATH to restore it from NuGet; install one of them (or set BICEP=/path/to/bicep)"
  mkdir -p "$cache"
  # The cache ignores itself, so a 120 MB binary can never be committed by accident.
  [[ -f "$root/.tools/.gitignore" ]] || printf '*\n' >"$root/.tools/.gitignore"
  # Parallel test workers may all arrive here on a fresh machine: one restores, the others wait.
  exec 9>"$cache/.lock"
  flock 9
  if [[ ! -x "$exe" ]]; then
    local tfm
    tfm="net$(dotnet --version | cut -d. -f1).0"
    cat >"$cache/restore.csproj" <<EOF
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <TargetFramework>$tfm</TargetFramework>
  </PropertyGroup>
  <ItemGroup>
    <PackageDownload Include="Azure.Bicep.CommandLine.$rid" Version="[$BICEP_VERSION]" />
  </ItemGroup>
</Project>
EOF
    echo "tools/bicep.sh: restoring Azure.Bicep.CommandLine.$rid $BICEP_VERSION from NuGet into .tools/bicep/" >&2
    DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 \
      dotnet restore "$cache/restore.csproj" --packages "$cache/packages" --verbosity quiet >&2 \
      || die "dotnet restore of Azure.Bicep.CommandLine.$rid $BICEP_VERSION failed (see above)"
    [[ -f "$exe" ]] || die "the restored package has no $exe"
    chmod u+x "$exe"
  fi
  flock -u 9
  echo "$exe"
}

resolve() {
  if [[ -n "${BICEP:-}" ]]; then
    [[ -x "$BICEP" ]] || die "BICEP=$BICEP is not an executable file"
    echo "$BICEP"; return
  fi
  if [[ "${BICEP_USE_NUGET:-}" != "1" ]]; then
    if command -v bicep >/dev/null; then command -v bicep; return; fi
    if command -v az >/dev/null; then
      local az_bicep="${AZURE_CONFIG_DIR:-$HOME/.azure}/bin/bicep"
      [[ -x "$az_bicep" ]] || az bicep install >&2 || true
      if [[ -x "$az_bicep" ]]; then echo "$az_bicep"; return; fi
    fi
  fi
  install_from_nuget
}

check() {
  local bicep files status=0
  bicep="$(resolve)"
  echo "bicep: $("$bicep" --version) ($bicep)"
  mapfile -t files < <(cd "$root" && find infra -name '*.bicep' | sort)
  [[ ${#files[@]} -gt 0 ]] || die "no .bicep files under $root/infra"
  # One process per command (each start costs ~1 s): lint every file, then build every file to a
  # scratch folder (the build also proves ARM JSON can be emitted). Both print
  # "path(line,col) : Warning|Error CODE: message"; any such line fails the check, because a compiler
  # warning (unknown property, unknown API version, ...) is as real a defect as an error.
  local outdir diagnostics
  outdir="$(mktemp -d)"
  trap 'rm -rf "$outdir"' RETURN
  diagnostics="$(cd "$root" && "$bicep" lint --pattern 'infra/**/*.bicep' 2>&1)" || status=1
  diagnostics+=$'\n'"$(cd "$root" && "$bicep" build --pattern 'infra/**/*.bicep' --outdir "$outdir" 2>&1)" || status=1
  # The same finding is reported once per file that pulls the module in, and by both commands.
  diagnostics="$(awk 'NF && !seen[$0]++' <<<"$diagnostics")"
  if [[ -n "$diagnostics" ]]; then printf '%s\n' "$diagnostics"; fi
  if grep -Eq ': (Warning|Error) ' <<<"$diagnostics"; then status=1; fi
  # Formatting: the compiler's own formatter is the style; a file it would change fails the check.
  # (format cannot combine --pattern with --outdir, so it formats a scratch copy in place.)
  local unformatted
  cp -R "$root/infra" "$outdir/formatted"
  (cd "$outdir/formatted" && "$bicep" format --pattern '**/*.bicep' >/dev/null 2>&1) || status=1
  unformatted="$(cd "$root" && for f in "${files[@]}"; do cmp -s "$f" "$outdir/formatted/${f#infra/}" || echo "$f"; done)"
  if [[ -n "$unformatted" ]]; then
    printf 'not formatted (fix with: tools/bicep.sh format --pattern "infra/**/*.bicep"):\n%s\n' "$unformatted"
    status=1
  fi
  if [[ $status -ne 0 ]]; then
    echo "infra check FAILED: errors, warnings or unformatted files (above)" >&2
    return 1
  fi
  echo "infra check passed: ${#files[@]} Bicep files lint, build and are formatted, with no warnings"
}

case "${1:-}" in
  check) check ;;
  path) resolve ;;
  "") die "usage: tools/bicep.sh check | path | <bicep arguments>" ;;
  *) bicep="$(resolve)"; exec "$bicep" "$@" ;;
esac
