#!/usr/bin/env bash
# Gradescope's round trip in the real /autograder layout (run as root):
#
#   benchmarks/gradescope_e2e.sh [--notebook NB.ipynb] [--profile tiny|smoke] [--rootfs DIR] [--keep]
#                                [--limits none|gradescope|recommended] [--memory SIZE] [--cpus N] [--timeout S]
#                                [--python PY]
#
# Builds the bundle from this checkout, unpacks it into a clean /autograder/source, runs setup.sh
# there in a bare environment (as Gradescope's image build does: it installs a Python and the
# locked dependencies, minutes), copies run_autograder to /autograder/run_autograder, puts the
# notebook (default: reference/solution.ipynb) in /autograder/submission, runs
# /autograder/run_autograder from /autograder, and checks /autograder/results/results.json: the
# schema, one test per check in the rubric's order, and, for the reference solution, every check
# that carries points passed.
#
# --rootfs DIR does all of it inside a root file system (chroot, with /proc, /dev and /sys mounted
# for the run), e.g. an Ubuntu 22.04 like Gradescope's base image (docs/gradescope.md says how to
# make one). Without it, /autograder is this machine's.
#
# --limits runs /autograder/run_autograder as Gradescope's container would see it: a memory cgroup around
# the whole process tree (swap included where the kernel counts it), a CPU quota, and a wall clock that
# kills the tree (timeout -s KILL), made on this machine's cgroup v1 or v2 hierarchy under this script's
# own group. "gradescope" is Gradescope's defaults (768 MB, half a CPU, 10 minutes: its
# troubleshooting.md); "recommended" is what docs/gradescope.md recommends for the profile; --memory,
# --cpus and --timeout override either. The bundle is built with --time-budget set to the clock. With a
# limit, results.json must be a valid one: graded, or saying which setting to raise (no score); the
# peak memory of the tree and the time are printed.
#
# --python PY skips setup.sh's installs (a Python, the locked packages: minutes, and the network) and
# grades with PY's environment instead (GRADER_PYTHON); the bundle's data is still prepared with it.
#
# /autograder is removed before and after (--keep leaves it); one this script did not create is
# left alone. The bundle, the results and the logs are copied to $E2E_OUT (default /tmp/gradescope-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

notebook="reference/solution.ipynb"
profile="tiny"
rootfs=""
keep=0
limits="none"
memory=""
cpus=""
clock=""
grader_python=""
while [ $# -gt 0 ]; do
    case "$1" in
        --notebook) notebook="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --rootfs) rootfs="$(realpath "$2")"; shift 2 ;;
        --keep) keep=1; shift ;;
        --limits) limits="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        --timeout) clock="$2"; shift 2 ;;
        --python) grader_python="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;  # not resolved: a venv's python is a link
        *) echo "usage: $0 [--notebook NB.ipynb] [--profile tiny|smoke] [--rootfs DIR] [--keep] [--limits none|gradescope|recommended] [--memory SIZE] [--cpus N] [--timeout S] [--python PY]" >&2; exit 2 ;;
    esac
done
# The recommended settings per profile (docs/gradescope.md, "Autograder settings").
case "$limits" in
    none) ;;
    gradescope) memory="${memory:-768M}"; cpus="${cpus:-0.5}"; clock="${clock:-600}" ;;
    recommended) memory="${memory:-3G}"; cpus="${cpus:-1}"; clock="${clock:-900}" ;;
    *) echo "$0: --limits $limits: expected none, gradescope or recommended" >&2; exit 2 ;;
esac
bytes() {  # 768M, 4G, or bytes
    local v="$1"
    case "$v" in *G) echo $(( ${v%G} * 1073741824 )) ;; *M) echo $(( ${v%M} * 1048576 )) ;; *) echo "$v" ;; esac
}
[ -f "$notebook" ] || { echo "$0: no such notebook: $notebook" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: run as root (Gradescope's scripts run as root, and /autograder is at the top)" >&2; exit 2; }
[ -z "$rootfs" ] || [ -x "$rootfs/bin/bash" ] || { echo "$0: --rootfs $rootfs: no root file system there" >&2; exit 2; }
[ -z "$rootfs" ] || [ -z "$memory$cpus$clock" ] || { echo "$0: --limits, --memory, --cpus and --timeout work without --rootfs only" >&2; exit 2; }

AG="$rootfs/autograder"  # /autograder, as seen from here
MARK="$AG/.made-by-gradescope-e2e"
out="${E2E_OUT:-/tmp/gradescope-e2e}"
# What Gradescope's container gives its scripts: root, a plain PATH, no virtual environment.
bare=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
inside() {  # run a command in the container's file system
    if [ -n "$rootfs" ]; then chroot "$rootfs" "${bare[@]}" "$@"; else "${bare[@]}" "$@"; fi
}

if [ -e "$AG" ] && [ ! -e "$MARK" ]; then
    echo "$0: $AG exists and was not made by this script; remove it yourself first" >&2
    exit 2
fi
mounted=()
groups=()
finish() {
    local status=$?
    mkdir -p "$out"
    local g
    for g in "${groups[@]}"; do  # the emulated container's groups, once everything in them is gone
        [ -e "$g/cgroup.kill" ] && echo 1 > "$g/cgroup.kill" 2>/dev/null
        for pid in $(cat "$g/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        sleep 0.5
        find "$g" -depth -type d -exec rmdir {} \; 2>/dev/null || rmdir "$g" 2>/dev/null || echo "$0: could not remove $g" >&2
    done
    cp -f "$AG/results/results.json" "$AG/results/stdout" "$out/" 2>/dev/null || true
    local m
    for m in "${mounted[@]}"; do
        umount -R "$m" 2>/dev/null || umount -R -l "$m" || echo "$0: could not unmount $m" >&2
    done
    if [ "$keep" = 0 ] && [ -e "$MARK" ]; then
        rm -rf --one-file-system "$AG"
    fi
    echo "== exit status $status; bundle, results and logs in $out"
}
trap finish EXIT
rm -rf "$out"
[ ! -e "$AG" ] || rm -rf --one-file-system "$AG"
mkdir -p "$AG/source" "$AG/submission" "$AG/results" "$out"
touch "$MARK"
if [ -n "$rootfs" ]; then
    mount -t proc proc "$rootfs/proc" && mounted+=("$rootfs/proc")
    mount --rbind /dev "$rootfs/dev" && mount --make-rslave "$rootfs/dev" && mounted+=("$rootfs/dev")
    mount -t sysfs sysfs "$rootfs/sys" && mounted+=("$rootfs/sys")
    cp -fL /etc/resolv.conf "$rootfs/etc/resolv.conf"
    if [ -n "${PIP_CERT:-}" ]; then  # a network that intercepts TLS: pip inside trusts what pip here trusts
        cp -fL "$PIP_CERT" "$rootfs/etc/ssl/certs/e2e-pip-cert.pem"
        bare+=(PIP_CERT=/etc/ssl/certs/e2e-pip-cert.pem)
    fi
    echo "== in $rootfs: $(. "$rootfs/etc/os-release" && echo "$PRETTY_NAME"), python3 is $(inside python3 --version 2>&1)"
fi

echo "== build the bundle (profile $profile${clock:+, time budget $clock s})"
build_python="${BUILD_PYTHON:-$repo/.venv/bin/python}"
[ -x "$build_python" ] || build_python=python3
"$build_python" -m grader.gradescope bundle "$out/autograder.zip" --profile "$profile" ${clock:+--time-budget "$clock"}

echo "== unpack into /autograder/source, run setup.sh there (the image build)"
unzip -q "$out/autograder.zip" -d "$AG/source"
ls -l "$AG/source/setup.sh" "$AG/source/run_autograder"
started=$SECONDS
if [ -n "$grader_python" ]; then
    echo "== --python $grader_python: setup.sh's installs skipped; preparing the data with it"
    (cd "$AG/source" && "$grader_python" -m grader.gradescope prepare --profile "$profile" --data-cache "$AG/source/.data-cache" \
        && chmod -R go-rwx reference) 2>&1 | tee "$out/setup.log"
    bare+=(GRADER_PYTHON="$grader_python")
else
    inside bash -c 'cd /autograder/source && bash ./setup.sh' 2>&1 | tee "$out/setup.log"
fi
echo "== setup.sh took $((SECONDS - started)) s"
cp "$AG/source/run_autograder" "$AG/run_autograder"

# The emulated container: a group per limit, under this shell's own groups, that run_autograder joins.
wrap=()
if [ "$limits" != none ] || [ -n "$memory$cpus$clock" ]; then
    name="gradescope-e2e-$$"
    own() { awk -F: -v c="$1" '$2 == c {print $3}' /proc/self/cgroup; }
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        g="/sys/fs/cgroup$(own '')/$name"
        [ "$(own '')" = / ] && g="/sys/fs/cgroup/$name"
        mkdir "$g" && groups+=("$g")
        [ -z "$memory" ] || { echo "$(bytes "$memory")" > "$g/memory.max"; echo 0 > "$g/memory.swap.max" 2>/dev/null || true; }
        [ -z "$cpus" ] || echo "$(awk -v c="$cpus" 'BEGIN {printf "%d", c * 100000}') 100000" > "$g/cpu.max"
        join="echo \$\$ > $g/cgroup.procs"
        peak() { cat "$g/memory.peak" 2>/dev/null || echo "?"; }
        ooms() { awk '$1 == "oom_kill" {print $2}' "$g/memory.events"; }
    else
        m="/sys/fs/cgroup/memory$(own memory)"; [ -d "$m" ] || m=/sys/fs/cgroup/memory
        c="/sys/fs/cgroup/cpu$(own cpu)"; [ -d "$c" ] || c=/sys/fs/cgroup/cpu
        mkdir "$m/$name" "$c/$name" && groups+=("$m/$name" "$c/$name")
        if [ -n "$memory" ]; then
            echo "$(bytes "$memory")" > "$m/$name/memory.limit_in_bytes"
            echo "$(bytes "$memory")" > "$m/$name/memory.memsw.limit_in_bytes" 2>/dev/null || true
        fi
        [ -z "$cpus" ] || { echo 100000 > "$c/$name/cpu.cfs_period_us"; awk -v c="$cpus" 'BEGIN {printf "%d", c * 100000}' > "$c/$name/cpu.cfs_quota_us"; }
        join="echo \$\$ > $m/$name/cgroup.procs; echo \$\$ > $c/$name/cgroup.procs"
        peak() { cat "$m/$name/memory.max_usage_in_bytes"; }
        ooms() { awk '$1 == "oom_kill" {print $2}' "$m/$name/memory.oom_control"; }
    fi
    echo "== emulated container: memory ${memory:-unlimited}, CPUs ${cpus:-unlimited}, clock ${clock:-none} s"
    wrap=(sh -c "$join; exec \"\$@\"" sh)
    [ -z "$clock" ] || wrap+=(timeout -s KILL "$clock")
fi

echo "== grade $notebook as a submission"
cp "$notebook" "$AG/submission/"
started=$SECONDS
set +e
inside "${wrap[@]}" bash -c 'cd /autograder && /autograder/run_autograder' > "$AG/results/stdout" 2>&1
status=$?
set -e
cat "$AG/results/stdout"
echo "== run_autograder exited $status after $((SECONDS - started)) s"
if [ "${#groups[@]}" -gt 0 ]; then
    echo "== peak memory of the whole tree: $(peak) bytes; processes OOM-killed in it: $(ooms)"
fi

echo "== check /autograder/results/results.json"
expect_full=0
[ "$(realpath "$notebook")" = "$repo/reference/solution.ipynb" ] && expect_full=1
check_python=".venv/bin/python"
[ -z "$grader_python" ] || check_python="$grader_python"
inside bash -c "cd /autograder/source && $check_python - /autograder/results/results.json $expect_full" <<'EOF'
import json
import sys

from grader.judging.checks import CHECK_IDS

path, expect_full = sys.argv[1], sys.argv[2] == "1"
print(f"grader's Python: {sys.version.split()[0]}")
data = json.load(open(path))
tests = data["tests"]
if "score" not in data:  # not graded: a platform limit or a grader fault, which must say so and what to raise
    assert tests == [] and isinstance(data["output"], str), data
    print(f"NOT GRADED (no score): {data['output']}")
    assert "raise" in data["output"] or "Autograder error" in data["output"], data["output"]
    print("results.json: OK (explains why it is not graded)")
    sys.exit(0)
assert isinstance(data["score"], (int, float)), data["score"]
assert [t["name"] for t in tests] == list(CHECK_IDS), [t["name"] for t in tests]
for t in tests:
    assert t["status"] in ("passed", "failed"), t
    assert 0 <= t["score"] <= t["max_score"], t
    assert isinstance(t["output"], str) and t["output"], t
assert abs(sum(t["score"] for t in tests) - data["score"]) < 1e-9
max_score = sum(t["max_score"] for t in tests)
for t in tests:
    print(f"  {t['status']:6} {t['score']:g}/{t['max_score']:g}  {t['name']}")
print(f"score {data['score']:g} / {max_score:g}; output: {data['output']}")
if expect_full:
    failed = [t["name"] for t in tests if t["max_score"] > 0 and t["status"] != "passed"]
    assert not failed and data["score"] == max_score, f"the reference solution failed {failed}"
print("results.json: OK")
EOF
exit "$status"
