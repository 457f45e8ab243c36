"""The sandbox's cgroups: which hierarchy it finds, where it makes the job groups and what they get.

Most tests run against a fake cgroup v2 file system in a temporary folder (``FakeCgroupFs``): plain
files and folders, with the kernel's rules for the files the sandbox uses applied while it is
installed. One test uses a fake v1 tree, and one the machine's own v2 mount where it can be written.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from grader.runner import sandbox
from grader.runner.sandbox import cgroups, protections

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="cgroups are Linux's")

ROOT_FILES = {
    "cgroup.procs": "", "cgroup.threads": "", "cgroup.subtree_control": "", "cgroup.max.depth": "max\n",
    "cgroup.max.descendants": "max\n", "cgroup.stat": "nr_descendants 0\nnr_dying_descendants 0\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
GROUP_FILES = {
    **ROOT_FILES, "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.type": "domain\n", "cgroup.freeze": "0\n",
}
CONTROLLER_FILES = {
    "memory": {
        "memory.current": "0\n", "memory.max": "max\n", "memory.high": "max\n", "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", "memory.oom.group": "0\n",
    },
    "pids": {"pids.current": "0\n", "pids.max": "max\n", "pids.events": "max 0\n"},
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n", "cpu.idle": "0\n"},
    "io": {"io.max": "", "io.weight": "default 100\n"},
    "hugetlb": {"hugetlb.2MB.max": "max\n", "hugetlb.2MB.current": "0\n"},
}
READ_ONLY = {"cgroup.controllers", "cgroup.events", "cgroup.stat", "cpu.stat", "memory.current", "memory.events", "pids.current", "pids.events"}
LIMIT_FILES = {"memory.max", "memory.high", "memory.swap.max", "pids.max"}
ORDER = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")  # the kernel lists controllers in this order
SYSTEMD_USER_SCOPE = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"

_mkdir, _rmdir, _read_text, _write_text = Path.mkdir, Path.rmdir, Path.read_text, Path.write_text


def _oserror(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def _alive(pid: int) -> bool:
    try:
        stat = _read_text(Path(f"/proc/{pid}/stat"))
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class FakeCgroupFs:
    """A cgroup v2 file system in a folder: plain files stand in for the interface files, and while
    it is installed, operations under its root follow the kernel's rules for them.

    Making a folder in a group makes a group: its ``cgroup.controllers`` is the parent's
    ``cgroup.subtree_control``, with the core files and those of each of these controllers. Removing
    a group removes its files, refused (EBUSY) while it holds processes or groups. Writing
    ``cgroup.subtree_control`` takes ``+name`` / ``-name``, refused for a controller the group is not
    offered (ENOENT) and, below the root, for a group that holds processes (EBUSY, the "no internal
    processes" rule); the groups below get the change. Writing a pid to ``cgroup.procs`` moves the
    process, refused into a group below the root that enables controllers for its children (EBUSY).
    Writing ``1`` to ``cgroup.kill`` kills the group's processes. ``cgroup.procs`` and
    ``cgroup.threads`` list only live processes. Interface files cannot be created, read-only ones
    not written, and a limit takes only ``max`` or a number.

    As a user other than root (``user_is_root`` False), only the groups inside ``delegated`` may be
    changed, and a process moves only where the user may write ``cgroup.procs`` of the group that
    holds both its old and new group. A process no group lists is in ``own_group``.
    """

    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc", *, kill_file: bool = True) -> None:
        self.root = root
        self.kill_file = kill_file
        self.user_is_root = True
        self.delegated: list[Path] = []
        self.own_group = root
        self.killed_through_cgroup_kill: list[Path] = []
        root.mkdir(parents=True)
        for name, text in {**ROOT_FILES, "cgroup.controllers": controllers + "\n"}.items():
            _write_text(root / name, text)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fs = self

        def mkdir(path: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
            if not fs.inside(path) or path == fs.root:
                return _mkdir(path, mode, parents, exist_ok)
            if path.exists():
                if exist_ok and path.is_dir():
                    return None
                raise _oserror(errno.EEXIST, path)
            if not fs.is_group(path.parent):
                raise _oserror(errno.ENOENT, path)
            fs.check_may_change(path.parent, path)
            fs.make_group(path)
            return None

        def rmdir(path: Path) -> None:
            if not fs.inside(path) or not fs.is_group(path):
                return _rmdir(path)
            fs.check_may_change(path.parent, path)
            if path == fs.root or fs.pids(path) or any(p.is_dir() for p in path.iterdir()):
                raise _oserror(errno.EBUSY, path)
            for file in path.iterdir():
                file.unlink()
            return _rmdir(path)

        def read_text(path: Path, encoding: str | None = None, errors: str | None = None) -> str:
            if fs.inside(path) and fs.is_group(path.parent) and path.name == "cgroup.procs":
                return "".join(f"{pid}\n" for pid in fs.pids(path.parent))
            if fs.inside(path) and fs.is_group(path.parent) and path.name == "cgroup.threads":
                return "".join(f"{tid}\n" for pid in fs.pids(path.parent) for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int))
            return _read_text(path, encoding, errors)

        def write_text(path: Path, data: str, encoding: str | None = None, errors: str | None = None, newline: str | None = None) -> int:
            if not fs.inside(path) or not fs.is_group(path.parent):
                return _write_text(path, data, encoding, errors, newline)
            fs.write(path, data)
            return len(data)

        for name, replacement in (("mkdir", mkdir), ("rmdir", rmdir), ("read_text", read_text), ("write_text", write_text)):
            monkeypatch.setattr(Path, name, replacement)

    # What the kernel does.

    def inside(self, path: Path) -> bool:
        return path.is_relative_to(self.root)

    def is_group(self, path: Path) -> bool:
        return (path / "cgroup.procs").is_file()

    def make_group(self, path: Path) -> None:
        _mkdir(path)
        controllers = self.words(path.parent / "cgroup.subtree_control")
        files = {**GROUP_FILES, "cgroup.controllers": " ".join(controllers) + "\n"}
        if self.kill_file:
            files["cgroup.kill"] = ""
        for controller in controllers:
            files.update(CONTROLLER_FILES.get(controller, {}))
        for name, text in files.items():
            _write_text(path / name, text)

    def words(self, path: Path) -> list[str]:
        return _read_text(path).split()

    def pids(self, group: Path) -> list[int]:
        return [pid for pid in map(int, self.words(group / "cgroup.procs")) if _alive(pid)]

    def group_of(self, pid: int) -> Path:
        for procs in self.root.rglob("cgroup.procs"):
            if pid in map(int, self.words(procs)):
                return procs.parent
        return self.own_group

    def owns(self, group: Path) -> bool:
        return self.user_is_root or any(group.is_relative_to(d) for d in self.delegated)

    def check_may_change(self, group: Path, path: Path) -> None:
        if not self.owns(group):
            raise _oserror(errno.EACCES, path)

    def write(self, path: Path, data: str) -> None:
        group, name = path.parent, path.name
        if not path.exists():
            raise _oserror(errno.EACCES, path)  # cgroupfs makes no files
        if name in READ_ONLY:
            raise _oserror(errno.EACCES, path)
        if name == "cgroup.procs":
            self.move(int(data.strip()) or os.getpid(), group, path)
            return
        self.check_may_change(group, path)
        if name == "cgroup.subtree_control":
            self.set_subtree_control(group, data.split(), path)
        elif name == "cgroup.kill":
            if data.strip() != "1":
                raise _oserror(errno.EINVAL, path)
            self.killed_through_cgroup_kill.append(group)
            for pid in self.pids(group):
                os.kill(pid, signal.SIGKILL)
        elif name in LIMIT_FILES:
            value = data.strip()
            if value != "max" and not value.isdigit():
                raise _oserror(errno.EINVAL, path)
            _write_text(path, value + "\n")
        else:
            _write_text(path, data)

    def move(self, pid: int, target: Path, path: Path) -> None:
        source = self.group_of(pid)
        common = Path(os.path.commonpath([source, target]))
        self.check_may_change(target, path)
        self.check_may_change(common, path)
        if target != self.root and self.words(target / "cgroup.subtree_control"):
            raise _oserror(errno.EBUSY, path)
        if source != target:
            _write_text(source / "cgroup.procs", "".join(f"{p}\n" for p in self.pids(source) if p != pid))
            _write_text(target / "cgroup.procs", "".join(f"{p}\n" for p in [*self.pids(target), pid]))

    def set_subtree_control(self, group: Path, tokens: Iterable[str], path: Path) -> None:
        enabled = set(self.words(group / "cgroup.subtree_control"))
        offered = set(self.words(group / "cgroup.controllers"))
        for token in tokens:
            sign, controller = token[:1], token[1:]
            if sign not in "+-" or controller not in offered:
                raise _oserror(errno.ENOENT if sign in "+-" else errno.EINVAL, path)
            if sign == "+" and group != self.root and self.pids(group):
                raise _oserror(errno.EBUSY, path)
            enabled = enabled | {controller} if sign == "+" else enabled - {controller}
        _write_text(group / "cgroup.subtree_control", " ".join(c for c in ORDER if c in enabled) + "\n")
        for child in (p for p in group.iterdir() if p.is_dir()):
            before = set(self.words(child / "cgroup.controllers"))
            _write_text(child / "cgroup.controllers", " ".join(c for c in ORDER if c in enabled) + "\n")
            for controller in enabled - before:
                for name, text in CONTROLLER_FILES.get(controller, {}).items():
                    _write_text(child / name, text)
            for controller in before - enabled:
                for name in CONTROLLER_FILES.get(controller, {}):
                    (child / name).unlink()

    # What the system (systemd, the kernel) sets up before the grader starts.

    def make(self, path: str, subtree_control: str = "", procs: Iterable[int] = ()) -> Path:
        group = self.root
        for part in PurePosixPath(path).parts[1:]:
            group = group / part
            if not self.is_group(group):
                self.make_group(group)
        if subtree_control:
            self.set_subtree_control(group, [f"+{c}" for c in subtree_control.split()], group)
        if procs:
            _write_text(group / "cgroup.procs", "".join(f"{p}\n" for p in procs))
        return group

    def kernel_write(self, path: Path, text: str) -> None:
        """What the kernel itself writes in a read-only file (``memory.events``, ``cpu.stat``)."""
        _write_text(path, text)


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    sandbox.probe.cache_clear()
    yield
    sandbox.probe.cache_clear()


@pytest.fixture
def proc_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /proc/self/cgroup: this process in the v2 root until a test says otherwise."""
    path = tmp_path / "proc-self-cgroup"
    path.write_text("0::/\n")
    monkeypatch.setattr(cgroups, "PROC_SELF_CGROUP", path)
    return path


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_cgroup: Path) -> FakeCgroupFs:
    """A v2 tree as systemd leaves it, as ``CGROUP_ROOT``, seen by root."""
    fs = FakeCgroupFs(tmp_path / "cgroup")
    fs.make("/", "cpu io memory pids")
    fs.make("/system.slice", "memory pids")
    fs.make("/system.slice/cron.service", procs=[1])
    fs.install(monkeypatch)
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", fs.root)
    return fs


def delegate_user_scope(fs: FakeCgroupFs, proc_cgroup: Path) -> Path:
    """This process as user 1000 in a ``systemd-run --user --scope`` group, user@1000.service delegated
    to it (app.slice with no controllers enabled for its groups yet). Returns app.slice."""
    fs.make("/user.slice", "cpu memory pids")
    fs.make("/user.slice/user-1000.slice", "cpu memory pids")
    service = fs.make("/user.slice/user-1000.slice/user@1000.service", "cpu memory pids")
    own = fs.make(SYSTEMD_USER_SCOPE, procs=[os.getpid()])
    proc_cgroup.write_text(f"0::{SYSTEMD_USER_SCOPE}\n")
    fs.user_is_root, fs.delegated, fs.own_group = False, [service], own
    return own.parent


@pytest.fixture
def sleeper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test starts, killed and reaped at the end whatever happened."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def start_joined(limits: sandbox.Limits, children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(["sleep", "60"], preexec_fn=limits.join)
    children.append(child)
    return child


def test_v2_is_detected_from_cgroup_controllers_at_the_root(fake_v2: FakeCgroupFs) -> None:
    assert sandbox.hierarchy() == "v2"
    p = sandbox.probe()
    assert (p.cgroup, p.memory_cgroup, p.pids_cgroup, p.cpu_accounting) == ("v2", True, True, True)
    assert p.cgroup_parent == str(fake_v2.root / "l1l2-grader")
    assert "cgroup v2" in sandbox.describe() and sandbox.unmet() == []


def test_job_group_on_v2_gets_the_memory_and_process_limits_and_the_child_joins_it(
    fake_v2: FakeCgroupFs, sleeper: list[subprocess.Popen[bytes]]
) -> None:
    with sandbox.Limits(memory_bytes=123 * 2**20, pids=77) as limits:
        group = limits.groups["unified"]
        assert group == fake_v2.root / "l1l2-grader" / limits.name
        assert (group / "memory.max").read_text() == f"{123 * 2**20}\n"
        assert (group / "memory.swap.max").read_text() == "0\n"
        assert (group / "pids.max").read_text() == "77\n"
        child = start_joined(limits, sleeper)
        assert (group / "cgroup.procs").read_text().split() == [str(child.pid)]
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert not group.exists()


def test_v2_job_groups_get_memory_and_pids_but_not_the_cpu_controller(fake_v2: FakeCgroupFs) -> None:
    # With the cpu controller each job group would get a fair share of the CPU, background children included.
    sandbox.probe()
    assert (fake_v2.root / "l1l2-grader" / "cgroup.subtree_control").read_text().split() == ["memory", "pids"]


def test_oom_kill_on_v2_is_attributed_from_memory_events(fake_v2: FakeCgroupFs) -> None:
    with sandbox.Limits() as limits:
        events = limits.groups["unified"] / "memory.events"
        fake_v2.kernel_write(events, "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n")
        assert not limits.oom_killed()  # the limit was reached, nothing was killed
        fake_v2.kernel_write(events, "low 0\nhigh 0\nmax 40\noom 2\noom_kill 1\noom_group_kill 0\n")
        assert limits.oom_killed()


def test_cpu_seconds_on_v2_come_from_cpu_stat_usage_usec(fake_v2: FakeCgroupFs) -> None:
    with sandbox.Limits() as limits:
        stat = limits.groups["unified"] / "cpu.stat"
        fake_v2.kernel_write(stat, "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
        assert limits.cpu_seconds() == 2.5


@pytest.mark.parametrize("kill_file", [True, False], ids=["cgroup.kill", "no cgroup.kill"])
def test_kill_all_on_v2_stops_every_process_of_the_job_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_cgroup: Path, sleeper: list[subprocess.Popen[bytes]], kill_file: bool
) -> None:
    fs = FakeCgroupFs(tmp_path / "cgroup", "memory pids", kill_file=kill_file)
    fs.make("/", "memory pids")
    fs.install(monkeypatch)
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", fs.root)
    with sandbox.Limits() as limits:
        children = [start_joined(limits, sleeper) for _ in range(2)]
        limits.kill_all()
        assert [child.wait(timeout=5) for child in children] == [-signal.SIGKILL] * 2
        assert fs.killed_through_cgroup_kill == ([limits.groups["unified"]] if kill_file else [])


def test_isolated_run_on_v2_reports_the_oom_kill_and_cpu_time_and_removes_its_group(fake_v2: FakeCgroupFs, tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    parent = fake_v2.root / "l1l2-grader"
    with sandbox.IsolatedRun(["true"], sandbox.Isolation(job), timeout=30, log_path=job / "log") as run:
        (group,) = [g for g in parent.iterdir() if g.is_dir()]
        assert run.wait(20)
        fake_v2.kernel_write(group / "memory.events", "oom 1\noom_kill 1\n")
        fake_v2.kernel_write(group / "cpu.stat", "usage_usec 30000\nuser_usec 20000\nsystem_usec 10000\n")
        outcome = run.finish()
    assert (outcome.returncode, outcome.oom_killed, outcome.cpu_seconds) == (0, True, 0.03)
    assert not group.exists()


def test_a_user_under_a_delegated_subtree_gets_the_grader_group_beside_its_own(
    fake_v2: FakeCgroupFs, proc_cgroup: Path, sleeper: list[subprocess.Popen[bytes]]
) -> None:
    app_slice = delegate_user_scope(fake_v2, proc_cgroup)
    assert sandbox.own_cgroup() == SYSTEMD_USER_SCOPE
    p = sandbox.probe()
    assert (p.cgroup, p.memory_cgroup, p.pids_cgroup) == ("v2", True, True)
    assert p.cgroup_parent == str(app_slice / "l1l2-grader")
    assert not (fake_v2.root / "l1l2-grader").exists()  # the root is not the user's
    # The grader's own group holds the grader: it enables nothing below it.
    assert (app_slice / "run-r1.scope" / "cgroup.subtree_control").read_text().split() == []
    assert (app_slice / "cgroup.subtree_control").read_text().split() == ["memory", "pids"]
    with sandbox.Limits(pids=64) as limits:
        group = limits.groups["unified"]
        assert group.parent == app_slice / "l1l2-grader"
        assert (group / "pids.max").read_text() == "64\n"
        child = start_joined(limits, sleeper)
        assert (group / "cgroup.procs").read_text().split() == [str(child.pid)]
    assert not group.exists()


def test_own_cgroup_is_read_from_the_unified_line_of_proc_self_cgroup(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text("12:pids:/user.slice\n4:memory:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/x.scope\n")
    v1_only = tmp_path / "v1"
    v1_only.write_text("4:memory:/\n1:name=systemd:/\n")
    assert sandbox.own_cgroup(hybrid) == "/user.slice/x.scope"
    assert sandbox.own_cgroup(v1_only) is None
    assert sandbox.own_cgroup(tmp_path / "missing") is None


def test_v1_is_still_chosen_on_a_v1_tree_with_a_hugetlb_only_v2_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpuacct", "cpu", "systemd"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    assert sandbox.hierarchy() == "v1"
    p = sandbox.probe()
    assert (p.cgroup, p.memory_cgroup, p.pids_cgroup, p.cpu_accounting) == ("v1", True, True, True)
    assert "(cgroup v1)" in sandbox.describe()
    with sandbox.Limits(memory_bytes=2**30, pids=99) as limits:
        assert limits.groups == {c: root / c / "l1l2-grader" / limits.name for c in ("memory", "pids", "cpuacct")}
        assert (limits.groups["memory"] / "memory.limit_in_bytes").read_text() == str(2**30)
        assert (limits.groups["pids"] / "pids.max").read_text() == "99"


def test_an_unwritable_tree_turns_the_limits_off_and_unmet_names_them(fake_v2: FakeCgroupFs, proc_cgroup: Path) -> None:
    fake_v2.make("/user.slice/user-1000.slice/session-2.scope", procs=[os.getpid()])
    proc_cgroup.write_text("0::/user.slice/user-1000.slice/session-2.scope\n")
    fake_v2.user_is_root = False  # and nothing delegated
    p = sandbox.probe()
    assert (p.cgroup, p.memory_cgroup, p.pids_cgroup) == ("none", False, False)
    missing = sandbox.unmet()
    memory = [line for line in missing if line.startswith("no memory limit")]
    processes = [line for line in missing if line.startswith("no process limit")]
    assert len(memory) == len(processes) == 1
    assert all("run the grader as root" in line and "systemd-run --user --scope -p Delegate=yes" in line for line in memory + processes)
    with sandbox.Limits() as limits:
        assert limits.groups == {}


def test_missing_bubblewrap_is_unmet_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protections.shutil, "which", lambda name: None)
    assert not sandbox.probe().bubblewrap
    assert "bubblewrap is not installed: install it (apt-get install bubblewrap, dnf install bubblewrap)" in sandbox.unmet()


def test_bubblewrap_that_cannot_make_namespaces_is_unmet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protections.shutil, "which", lambda name: "/bin/false")
    assert not sandbox.probe().bubblewrap
    assert any(line.startswith("bubblewrap cannot create namespaces here: allow unprivileged user namespaces") for line in sandbox.unmet())


def test_not_linux_is_unmet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    p = sandbox.probe()
    assert (p.bubblewrap, p.memory_cgroup, p.pids_cgroup, p.cgroup) == (False, False, False, "none")
    (line,) = sandbox.unmet()
    assert line.startswith("not Linux (darwin)")


def test_grader_cgroup_root_sets_where_cgroups_are_looked_for(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory pids\n")
    show = "from grader.runner import sandbox; print(sandbox.cgroups.CGROUP_ROOT, sandbox.hierarchy())"
    repo = Path(sandbox.__file__).resolve().parents[3]

    def seen(value: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "GRADER_CGROUP_ROOT"}
        if value is not None:
            env["GRADER_CGROUP_ROOT"] = value
        return subprocess.run([sys.executable, "-c", show], env=env, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    assert seen(str(root)) == f"{root} v2"
    assert seen(None).startswith("/sys/fs/cgroup ")


def test_the_machines_v2_mount_takes_a_job_group_its_child_and_its_removal(
    monkeypatch: pytest.MonkeyPatch, sleeper: list[subprocess.Popen[bytes]]
) -> None:
    """On a machine whose v2 mount offers no memory or pids controller (here /sys/fs/cgroup/unified with
    hugetlb only, beside v1), what can still be checked for real: the group, joining it, its CPU time,
    killing its processes and removing it."""
    root = Path("/sys/fs/cgroup/unified")
    if not (root / "cgroup.controllers").is_file() or not os.access(root, os.W_OK):
        pytest.skip(f"no writable cgroup v2 mount at {root}")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    parent = root / "l1l2-grader"
    parent_existed = parent.exists()
    try:
        p = sandbox.probe()
        if p.cgroup != "v2":
            pytest.skip(f"no job group can be made under {root}: {p.notes}")
        assert p.cgroup_parent == str(parent)
        with sandbox.Limits() as limits:
            group = limits.groups["unified"]
            assert group.is_dir() and (group / "cgroup.procs").read_text() == ""
            child = start_joined(limits, sleeper)
            lines = Path(f"/proc/{child.pid}/cgroup").read_text().splitlines()
            assert f"0::/l1l2-grader/{limits.name}" in lines
            cpu = limits.cpu_seconds()
            assert cpu is not None and cpu >= 0
            assert not limits.oom_killed()
            limits.kill_all()
            assert child.wait(timeout=5) == -signal.SIGKILL
            deadline = time.monotonic() + 5
            while (group / "cgroup.procs").read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not group.exists()
    finally:
        if not parent_existed:
            try:
                parent.rmdir()
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------
# The platform's limits, read at run time (container_limits), and v1 job groups under the own group
# ------------------------------------------------------------------------------------------------


def write_files(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v2_limits_are_the_lowest_along_the_own_group_and_those_above(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write_files(root, {
        "cgroup.controllers": "cpu memory pids\n", "memory.max": "max\n", "cpu.max": "max 100000\n",
        "gradescope/memory.max": "805306368\n", "gradescope/cpu.max": "50000 100000\n",
        "gradescope/memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        "gradescope/job/memory.max": "max\n", "gradescope/job/cpu.max": "max 100000\n",
    })
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/gradescope/job\n")

    limits = sandbox.container_limits(root, proc)

    assert (limits.memory_bytes, limits.cpus, limits.hierarchy) == (768 * 2**20, 0.5, "v2")
    assert limits.memory_group == str(root / "gradescope") and limits.oom_kills() == 1


def test_v2_inside_a_container_reads_the_mount_root_as_its_own_group(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write_files(root, {"cgroup.controllers": "cpu memory\n", "memory.max": "4294967296\n", "cpu.max": "200000 100000\n"})
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")

    limits = sandbox.container_limits(root, proc)

    assert (limits.memory_bytes, limits.cpus) == (4 * 2**30, 2.0)


def test_v1_limits_come_from_the_own_memory_and_cpu_groups(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write_files(root, {
        "memory/cgroup.procs": "", "memory/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/docker/abc/memory.limit_in_bytes": "805306368\n",
        "memory/docker/abc/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")

    limits = sandbox.container_limits(root, proc)

    assert (limits.memory_bytes, limits.cpus, limits.hierarchy) == (768 * 2**20, 0.5, "v1")
    assert limits.oom_kills() == 2


def test_v1_without_limits_or_with_the_own_group_outside_the_mount_reads_the_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write_files(root, {
        "memory/cgroup.procs": "", "memory/memory.limit_in_bytes": "9223372036854771712\n",
        "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
    })
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/process_api/0544fe\n1:cpu:/\n")

    limits = sandbox.container_limits(root, proc)

    assert (limits.memory_bytes, limits.cpus) == (None, None)
    assert sandbox.container_limits(tmp_path / "nothing", proc) == sandbox.ContainerLimits(None, None)


def test_v1_job_groups_are_made_under_the_graders_own_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpuacct"):
        (root / controller / "service" / "grader").mkdir(parents=True)
        for group in (root / controller, root / controller / "service" / "grader"):
            (group / "cgroup.procs").write_text("")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("9:memory:/service/grader\n8:pids:/service/grader\n2:cpu,cpuacct:/service/grader\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroups, "PROC_SELF_CGROUP", proc)
    sandbox.probe.cache_clear()
    try:
        p = sandbox.probe()
        assert dict(p.v1_parents) == {c: str(root / c / "service" / "grader" / "l1l2-grader") for c in ("memory", "pids", "cpuacct")}
        with sandbox.Limits(memory_bytes=2**30) as limits:
            # Under the grader's group, so a limit on that group (a container's, a service's) also holds for the job.
            assert limits.groups["memory"] == root / "memory" / "service" / "grader" / "l1l2-grader" / limits.name
            assert (limits.groups["memory"] / "memory.limit_in_bytes").read_text() == str(2**30)
        assert not (root / "memory" / "l1l2-grader").exists()
    finally:
        sandbox.probe.cache_clear()
