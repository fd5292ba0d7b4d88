#!/usr/bin/env bash
#
# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
#
# The small helpers the project's shell tools share; sourced, never run.
# The tool sets TOOL (the prefix of its messages) before sourcing it, and
# SAY_FD=2 when its standard output is for data, not for messages.

# say <words>: one message line, prefixed with the tool's name.
say() { echo "$TOOL: $*" >&"${SAY_FD:-1}"; }

# fail <words>: the reason on standard error, then exit 1.
fail() {
    echo "$TOOL: FAILED: $*" >&2
    exit 1
}

# since <start>: seconds since <start> (an $EPOCHREALTIME), one decimal.
since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

# require_root [why]: fail unless running as root.
require_root() {
    [ "$(id -u)" -eq 0 ] || fail "must run as root${1:+ ($1)}"
}
