#!/bin/bash
#
# devstack/plugin.sh - DevStack plugin of nova-lifecycle
#
# devstack sources this file as ``plugin.sh <mode> [phase]`` from stack.sh
# (mode "stack"; phases pre-install, install, post-config, extra,
# test-config), unstack.sh ("unstack") and clean.sh ("clean"), after
# devstack/settings. On the nodes that run nova-compute (service n-cpu) it
#
# - stack (every phase): fails unless VIRT_DRIVER=libvirt;
# - stack install: installs the plugin from its clone (setup_develop);
# - stack post-config: sets [DEFAULT] compute_driver and the [lifecycle]
#   options given as NOVA_LIFECYCLE_* variables in $NOVA_CONF. nova-compute
#   reads $NOVA_CPU_CONF, which lib/nova's start_nova_compute builds only
#   later, when stack.sh starts nova (after this phase and after local.conf's
#   post-config sections are merged), by copying $NOVA_CONF and then
#   merging local.conf's [[post-config|$NOVA_CPU_CONF]] section into it;
# - stack extra (nova-compute is running by then): checks that
#   $NOVA_CPU_CONF carries the driver and the options, and loads the driver
#   through nova's own loader with that file (NOVA_LIFECYCLE_SELFCHECK);
# - unstack: nothing; the plugin runs no process of its own and unstack.sh
#   stops nova-compute itself. The configuration stays, so restarting
#   devstack@n-cpu runs the plugin again;
# - clean: puts nova's libvirt driver back in $NOVA_CONF and
#   $NOVA_CPU_CONF, removes the [lifecycle] options the plugin set, and
#   uninstalls the plugin unless it lives in devstack's global virtualenv,
#   which clean.sh deletes anyway.

# Save trace setting
_XTRACE_NOVA_LIFECYCLE=$(set +o | grep xtrace)
set -o xtrace

# The [lifecycle] options the plugin passes on, as <option>:<type>. The
# variable of each is NOVA_LIFECYCLE_<OPTION IN CAPITALS>; an empty or
# unset variable leaves the option out, so the plugin's default applies.
NOVA_LIFECYCLE_OPTIONS="stopped_event_delay:float fast_stopped_events:bool"
NOVA_LIFECYCLE_OPTIONS+=" stopped_event_grace:float dispatch_workers:int"
NOVA_LIFECYCLE_OPTIONS+=" delivery_retries:int delivery_retry_interval:float"
NOVA_LIFECYCLE_OPTIONS+=" stats_log_interval:int stall_timeout:int"
NOVA_LIFECYCLE_OPTIONS+=" metrics_textfile:path metrics_interval:int"

# What devstack's hypervisor-libvirt sets; clean puts it back.
NOVA_LIFECYCLE_UPSTREAM_DRIVER=libvirt.LibvirtDriver


# nova_lifecycle_require_libvirt - the plugin replaces nova's libvirt driver
function nova_lifecycle_require_libvirt {
    if [[ "$VIRT_DRIVER" != "libvirt" ]]; then
        die $LINENO "nova-lifecycle replaces nova's libvirt driver: it" \
            "needs VIRT_DRIVER=libvirt on the nodes that run n-cpu, not" \
            "VIRT_DRIVER=$VIRT_DRIVER. Set VIRT_DRIVER=libvirt or do not" \
            "enable the plugin on this node."
    fi
}

# _nova_lifecycle_value <option> <type> - the value to write for a
# [lifecycle] option, from its NOVA_LIFECYCLE_* variable: nothing when the
# variable is unset or empty, "?" when it is no valid <type> (bool: what
# devstack's trueorfalse accepts; float and int: not negative).
function _nova_lifecycle_value {
    local var=NOVA_LIFECYCLE_${1^^}
    local value=${!var:-}
    if [[ -z "$value" ]]; then
        return 0
    fi
    case $2 in
        bool)
            value=$(trueorfalse "?" $var)
            ;;
        float)
            if ! [[ "$value" =~ ^([0-9]+([.][0-9]*)?|[.][0-9]+)$ ]]; then
                value="?"
            fi
            ;;
        int)
            if ! [[ "$value" =~ ^[0-9]+$ ]]; then
                value="?"
            fi
            ;;
        path)
            if ! [[ "$value" == /* && "$value" != *[[:space:]]* ]]; then
                value="?"
            fi
            ;;
        *)
            value="?"
            ;;
    esac
    echo "$value"
}

# nova_lifecycle_check_options - die on a malformed NOVA_LIFECYCLE_* value
# before anything is written. Ranges are left to oslo.config, which the
# selfcheck of the extra phase runs.
function nova_lifecycle_check_options {
    local entry name type var value
    for entry in $NOVA_LIFECYCLE_OPTIONS; do
        name=${entry%%:*}
        type=${entry#*:}
        value=$(_nova_lifecycle_value $name $type)
        if [[ "$value" == "?" ]]; then
            var=NOVA_LIFECYCLE_${name^^}
            die $LINENO "$var='${!var}' is not a valid value for" \
                "[lifecycle] $name (a $type, not negative)"
        fi
    done
}

# install_nova_lifecycle - install the plugin from its clone, editable
function install_nova_lifecycle {
    setup_develop $NOVA_LIFECYCLE_DIR
}

# configure_nova_lifecycle - write the driver and the options in $NOVA_CONF,
# the file start_nova_compute copies to $NOVA_CPU_CONF
function configure_nova_lifecycle {
    local entry name value

    nova_lifecycle_check_options
    # stack.sh starts configure_neutron_nova in the background right before
    # this phase and collects it only after it; that job edits $NOVA_CONF
    # too, and two iniset runs on one file at the same time can lose either
    # change (see the NOTE above "async_wait configure_neutron_nova" in
    # stack.sh). Collect it first: stack.sh's own async_wait then finds it
    # done. Nothing is waited for when it was never started.
    if declare -F async_wait >/dev/null; then
        async_wait configure_neutron_nova || \
            die $LINENO "configure_neutron_nova failed"
    fi

    iniset $NOVA_CONF DEFAULT compute_driver $NOVA_LIFECYCLE_COMPUTE_DRIVER
    for entry in $NOVA_LIFECYCLE_OPTIONS; do
        name=${entry%%:*}
        value=$(_nova_lifecycle_value $name ${entry#*:})
        if [[ -n "$value" ]]; then
            iniset $NOVA_CONF lifecycle $name "$value"
        fi
    done
}

# verify_nova_lifecycle - check the file nova-compute reads, then load the
# driver the way nova-compute does, with that file
function verify_nova_lifecycle {
    local entry name expected actual python

    actual=$(iniget $NOVA_CPU_CONF DEFAULT compute_driver)
    if [[ "$actual" != "$NOVA_LIFECYCLE_COMPUTE_DRIVER" ]]; then
        die $LINENO "nova-compute reads $NOVA_CPU_CONF, whose [DEFAULT]" \
            "compute_driver is '$actual', not" \
            "$NOVA_LIFECYCLE_COMPUTE_DRIVER: does a" \
            "[[post-config|\$NOVA_CPU_CONF]] section of local.conf set it?"
    fi
    for entry in $NOVA_LIFECYCLE_OPTIONS; do
        name=${entry%%:*}
        expected=$(_nova_lifecycle_value $name ${entry#*:})
        if [[ -z "$expected" ]]; then
            continue
        fi
        actual=$(iniget $NOVA_CPU_CONF lifecycle $name)
        if [[ "$actual" != "$expected" ]]; then
            die $LINENO "[lifecycle] $name is '$actual' in" \
                "$NOVA_CPU_CONF, not NOVA_LIFECYCLE_${name^^}=$expected:" \
                "does local.conf set it for \$NOVA_CPU_CONF as well?"
        fi
    done

    if [[ "$NOVA_LIFECYCLE_SELFCHECK" == "True" ]]; then
        python=${PYTHON:-python3}
        if ! $python -m nova_lifecycle.cmd.selfcheck \
                --config-file $NOVA_CPU_CONF; then
            die $LINENO "nova-lifecycle does not load with $NOVA_CPU_CONF" \
                "(python -m nova_lifecycle.cmd.selfcheck, output above)"
        fi
    fi
}

# cleanup_nova_lifecycle - leave no reference to the plugin behind
function cleanup_nova_lifecycle {
    local conf entry

    for conf in $NOVA_CONF $NOVA_CPU_CONF; do
        if [[ ! -f $conf ]]; then
            continue
        fi
        if [[ "$(iniget $conf DEFAULT compute_driver)" == \
                "$NOVA_LIFECYCLE_COMPUTE_DRIVER" ]]; then
            iniset $conf DEFAULT compute_driver \
                $NOVA_LIFECYCLE_UPSTREAM_DRIVER
        fi
        for entry in $NOVA_LIFECYCLE_OPTIONS; do
            inidelete $conf lifecycle ${entry%%:*}
        done
    done
    # pip_uninstall works on the system python; with GLOBAL_VENV the plugin
    # is in $DEVSTACK_VENV, which clean.sh removes with $DATA_DIR.
    if [[ "${GLOBAL_VENV:-False}" != "True" ]]; then
        pip_uninstall nova-lifecycle
    fi
}


if is_service_enabled n-cpu; then
    if [[ "${1:-}" == "stack" ]]; then
        nova_lifecycle_require_libvirt
        case "${2:-}" in
            install)
                echo_summary "Installing nova-lifecycle"
                install_nova_lifecycle
                ;;
            post-config)
                echo_summary "Configuring nova-lifecycle"
                configure_nova_lifecycle
                ;;
            extra)
                echo_summary "Checking nova-lifecycle"
                verify_nova_lifecycle
                ;;
        esac
    elif [[ "${1:-}" == "unstack" ]]; then
        # No process of its own; see the head of this file.
        :
    elif [[ "${1:-}" == "clean" ]]; then
        echo_summary "Cleaning nova-lifecycle"
        cleanup_nova_lifecycle
    fi
fi

# Restore xtrace
$_XTRACE_NOVA_LIFECYCLE
