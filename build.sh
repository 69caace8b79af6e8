#!/usr/bin/env bash
# build.ps1 for machines without pwsh: runs it with tools/pwsh (the pwsh on PATH, or the repository's
# PowerShell .NET tool, restored on first use). Same arguments as build.ps1, e.g. ./build.sh -Task Serve
exec "$(dirname "$0")/tools/pwsh" -NoProfile "$(dirname "$0")/build.ps1" "$@"
