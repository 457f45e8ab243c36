#!/usr/bin/env bash
# Gradescope's round trip in the real /autograder layout (run as root):
#
#   benchmarks/gradescope_e2e.sh [--notebook NB.ipynb] [--profile tiny|smoke] [--rootfs DIR] [--keep]
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
# /autograder is removed before and after (--keep leaves it); one this script did not create is
# left alone. The bundle, the results and the logs are copied to $E2E_OUT (default /tmp/gradescope-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

notebook="reference/solution.ipynb"
profile="tiny"
rootfs=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --notebook) notebook="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --rootfs) rootfs="$(realpath "$2")"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--notebook NB.ipynb] [--profile tiny|smoke] [--rootfs DIR] [--keep]" >&2; exit 2 ;;
    esac
done
[ -f "$notebook" ] || { echo "$0: no such notebook: $notebook" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: run as root (Gradescope's scripts run as root, and /autograder is at the top)" >&2; exit 2; }
[ -z "$rootfs" ] || [ -x "$rootfs/bin/bash" ] || { echo "$0: --rootfs $rootfs: no root file system there" >&2; exit 2; }

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
finish() {
    local status=$?
    mkdir -p "$out"
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

echo "== build the bundle (profile $profile)"
build_python="${BUILD_PYTHON:-$repo/.venv/bin/python}"
[ -x "$build_python" ] || build_python=python3
"$build_python" -m grader.gradescope bundle "$out/autograder.zip" --profile "$profile"

echo "== unpack into /autograder/source, run setup.sh there (the image build)"
unzip -q "$out/autograder.zip" -d "$AG/source"
ls -l "$AG/source/setup.sh" "$AG/source/run_autograder"
started=$SECONDS
inside bash -c 'cd /autograder/source && bash ./setup.sh' 2>&1 | tee "$out/setup.log"
echo "== setup.sh took $((SECONDS - started)) s"
cp "$AG/source/run_autograder" "$AG/run_autograder"

echo "== grade $notebook as a submission"
cp "$notebook" "$AG/submission/"
started=$SECONDS
set +e
inside bash -c 'cd /autograder && /autograder/run_autograder' > "$AG/results/stdout" 2>&1
status=$?
set -e
cat "$AG/results/stdout"
echo "== run_autograder exited $status after $((SECONDS - started)) s"

echo "== check /autograder/results/results.json"
expect_full=0
[ "$(realpath "$notebook")" = "$repo/reference/solution.ipynb" ] && expect_full=1
inside bash -c "cd /autograder/source && .venv/bin/python - /autograder/results/results.json $expect_full" <<'EOF'
import json
import sys

from grader.judging.checks import CHECK_IDS

path, expect_full = sys.argv[1], sys.argv[2] == "1"
print(f"grader's Python: {sys.version.split()[0]}")
data = json.load(open(path))
tests = data["tests"]
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
