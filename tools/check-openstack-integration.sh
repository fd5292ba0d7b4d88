#!/usr/bin/env bash
# The checks of the project's OpenStack integration files, as CI runs them:
#   bashate       devstack/plugin.sh, devstack/settings, this script,
#                 tools/common.sh, tools/services.sh, tools/tempest.sh
#   zuul-lint     yamllint of zuul.d/ and playbooks/, zuul.d/ against the
#                 Zuul configuration schema (zuulcilint, which also checks
#                 that every playbook a job names exists), and Ansible's
#                 syntax check of the playbooks
#   releasenotes  reno lint, then the release notes built with sphinx -W
#   docs          the documentation built with sphinx -W
# (The devstack plugin's phases are run by the unit tests:
# nova_lifecycle/tests/unit/test_devstack_plugin.py.)
# Sets up what it needs first (tools/install-deps.sh); the tox environments
# install their tools from PyPI.
set -euo pipefail

cd "$(dirname "$0")/.."
./tools/install-deps.sh

# reno builds the release notes from git: a note that is not committed or
# at least staged ("git add") would be left out of the build silently.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    untracked=$(git ls-files --others --exclude-standard -- releasenotes/notes)
    if [ -n "$untracked" ]; then
        echo "check-openstack-integration: release notes unknown to git," \
            "invisible to reno (git add them):" >&2
        echo "$untracked" >&2
        exit 1
    fi
fi

ENVS=${NOVA_LIFECYCLE_CHECK_ENVS:-bashate,zuul-lint,releasenotes,docs}
exec .venv-tools/bin/tox -e "$ENVS"
