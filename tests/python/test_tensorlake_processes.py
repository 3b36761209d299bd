"""Commands and background processes through the unmodified tensorlake client."""

import signal

import pytest
from tensorlake.sandbox import (
    ManagedProcessHealthStatus,
    ProcessHealthCheck,
    ProcessHealthCheckType,
    ProcessUserSpec,
    CommandExitReason,
    OutputMode,
    ProcessStatus,
    RemoteAPIError,
    RestartPolicy,
    RestartPolicyConfig,
    SandboxError,
    StdinMode,
)

from tl_helpers import box, eventually, tl  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def process_status(sandbox, pid):
    return sandbox.get_process(pid).value


def wait_exited(sandbox, pid):
    return eventually(
        lambda: (info := process_status(sandbox, pid)).status != ProcessStatus.RUNNING and info,
        f"process {pid} to end",
    )


# --- run -------------------------------------------------------------------


def test_run_env_cwd_exit_code_and_streams(box):
    result = box.run(
        "sh",
        args=["-c", 'echo "$GREETING $WHO"; pwd; echo to-stderr >&2; exit 7'],
        env={"GREETING": "hello", "WHO": "tensorlake"},
        working_dir="/usr/share",
    )
    assert result.exit_code == 7
    assert result.reason == CommandExitReason.EXITED
    assert result.stdout.splitlines() == ["hello tensorlake", "/usr/share"]
    assert result.stderr == "to-stderr"


def test_run_many_lines_keep_order(box):
    result = box.run("seq", args=["1", "2000"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [str(i) for i in range(1, 2001)]


def test_run_timeout_kills_the_whole_tree(box):
    # The shell starts a grandchild; the timeout must take both down.
    result = box.run(
        "sh", args=["-c", "sleep 299 & echo started; wait"], timeout=1.0
    )
    assert result.reason == CommandExitReason.TIMED_OUT
    assert result.exit_code == -signal.SIGKILL
    assert result.stdout == "started"
    leftover = box.run("sh", args=["-c", "pgrep -f '^sleep 299$' || true"])
    assert leftover.stdout == ""


def test_run_signaled_command(box):
    result = box.run("sh", args=["-c", "kill -TERM $$"])
    assert result.exit_code == -signal.SIGTERM
    assert result.reason == CommandExitReason.SIGNALED


def test_run_as_another_user(box):
    result = box.run("id", args=["-u"], user="1000:1000")
    assert (result.exit_code, result.stdout) == (0, "1000")
    assert box.run("id", args=["-un"], user="root").stdout == "root"
    spec = box.run("sh", args=["-c", "id -u; id -g"], user=ProcessUserSpec(uid=1234, gid=4321))
    assert spec.stdout.split() == ["1234", "4321"]


def test_missing_command_is_refused(box):
    for start in (box.run, box.start_process):
        with pytest.raises(RemoteAPIError) as e:
            start("/no/such/binary")
        assert e.value.status_code == 400
        assert "/no/such/binary" in str(e.value)


# --- background processes ---------------------------------------------------


def test_start_process_stdin_pipe_and_follow(box):
    proc = box.start_process(
        "sh",
        args=["-c", 'while read l; do echo "got $l"; echo "err $l" >&2; done; echo bye'],
        stdin_mode=StdinMode.PIPE,
    ).value
    assert proc.status == ProcessStatus.RUNNING
    assert proc.stdin_writable
    assert proc.command == "sh"
    box.write_stdin(proc.pid, b"one\ntwo\n")
    box.write_stdin(proc.pid, b"three\n")
    box.close_stdin(proc.pid)

    events = list(box.follow_output(proc.pid))
    assert [e.line for e in events if e.stream == "stdout"] == ["got one", "got two", "got three", "bye"]
    assert [e.line for e in events if e.stream == "stderr"] == ["err one", "err two", "err three"]

    done = wait_exited(box, proc.pid)
    assert (done.status, done.exit_code) == (ProcessStatus.EXITED, 0)
    assert not done.stdin_writable
    assert done.ended_at is not None

    assert box.get_stdout(proc.pid).value.lines == ["got one", "got two", "got three", "bye"]
    stderr = box.get_stderr(proc.pid).value
    assert (stderr.lines, stderr.line_count, stderr.pid) == (["err one", "err two", "err three"], 3, proc.pid)
    assert box.get_output(proc.pid).value.line_count == 7
    assert [e.line for e in box.follow_stdout(proc.pid)] == ["got one", "got two", "got three", "bye"]
    assert [e.line for e in box.follow_stderr(proc.pid)] == ["err one", "err two", "err three"]


def test_process_list_get_signal_kill(box):
    sleeper = box.start_process("sleep", args=["300"]).value
    trapper = box.start_process(
        "sh", args=["-c", "trap 'echo caught; exit 3' USR1; echo ready; while :; do sleep 0.1; done"]
    ).value
    try:
        listed = {p.pid: p for p in box.list_processes()}
        assert listed[sleeper.pid].status == ProcessStatus.RUNNING
        assert listed[sleeper.pid].args == ["300"]
        assert trapper.pid in listed
        got = box.get_process(sleeper.pid).value
        assert (got.pid, got.command) == (sleeper.pid, "sleep")

        eventually(lambda: "ready" in box.get_stdout(trapper.pid).value.lines, "the trap to be set")
        assert box.send_signal(trapper.pid, signal.SIGUSR1).value.success
        done = wait_exited(box, trapper.pid)
        assert (done.status, done.exit_code) == (ProcessStatus.EXITED, 3)
        assert "caught" in box.get_stdout(trapper.pid).value.lines

        box.send_signal(sleeper.pid, signal.SIGTERM)
        done = wait_exited(box, sleeper.pid)
        assert (done.status, done.signal) == (ProcessStatus.SIGNALED, signal.SIGTERM)
    finally:
        for p in (sleeper, trapper):
            try:
                box.kill_process(p.pid)
            except SandboxError:
                pass


def test_kill_process_takes_children_too(box):
    proc = box.start_process("sh", args=["-c", "sleep 301 & sleep 302 & wait"]).value
    eventually(lambda: len(box.run("pgrep", args=["-f", "^sleep 30[12]$"]).stdout.split()) == 2, "both children")
    box.kill_process(proc.pid)
    eventually(lambda: box.run("sh", args=["-c", "pgrep -f '^sleep 30[12]$' || true"]).stdout == "", "children gone")
    # A killed process is either forgotten or reported as signaled.
    try:
        info = box.get_process(proc.pid).value
    except SandboxError:
        return
    assert info.status == ProcessStatus.SIGNALED


def test_discarded_output_is_not_kept(box):
    proc = box.start_process(
        "sh", args=["-c", "echo out; echo err >&2"], stdout_mode=OutputMode.DISCARD
    ).value
    wait_exited(box, proc.pid)
    assert box.get_stdout(proc.pid).value.lines == []
    assert box.get_stderr(proc.pid).value.lines == ["err"]


def test_managed_process_by_name_restarts(box):
    name = "tl-worker"
    proc = box.start_process(
        "sh",
        args=["-c", "echo run; sleep 300"],
        name=name,
        restart=RestartPolicyConfig(policy=RestartPolicy.ALWAYS, initial_backoff_ms=100),
    ).value
    try:
        assert proc.managed is not None and proc.managed.name == name
        by_name = box.get_process(name).value
        assert by_name.pid == proc.pid
        restarted = box.restart_process(name).value
        assert restarted.pid != proc.pid
        assert box.get_process(name).value.pid == restarted.pid
        eventually(lambda: box.get_process(name).value.status == ProcessStatus.RUNNING, "the restart")
    finally:
        box.kill_process(name)


def test_managed_health_checks(box):
    healthy = box.start_process(
        "python3",
        args=["-m", "http.server", "7003", "--bind", "127.0.0.1"],
        working_dir="/tmp",
        name="tl-web",
        health_check=ProcessHealthCheck(
            type=ProcessHealthCheckType.HTTP, port=7003, path="/", initial_delay_ms=100, interval_ms=100
        ),
    ).value
    # Nothing listens on 7004: the check fails and the supervisor restarts it.
    failing = box.start_process(
        "sleep",
        args=["300"],
        name="tl-deaf",
        restart=RestartPolicyConfig(policy=RestartPolicy.ALWAYS, initial_backoff_ms=100),
        health_check=ProcessHealthCheck(
            type=ProcessHealthCheckType.TCP, port=7004, initial_delay_ms=100, interval_ms=100, failure_threshold=2
        ),
    ).value
    try:
        assert healthy.managed.health_check.port == 7003
        eventually(
            lambda: box.get_process("tl-web").value.managed.health_status == ManagedProcessHealthStatus.HEALTHY,
            "the web server to be healthy",
        )
        restarted = eventually(
            lambda: (m := box.get_process("tl-deaf").value.managed).restart_count >= 1 and m,
            "the unhealthy process to be restarted",
        )
        assert restarted.health_status in (ManagedProcessHealthStatus.UNHEALTHY, ManagedProcessHealthStatus.STARTING)
        assert box.get_process("tl-deaf").value.pid != failing.pid
    finally:
        box.kill_process("tl-web")
        box.kill_process("tl-deaf")


def test_unknown_process_is_an_error(box):
    with pytest.raises(SandboxError):
        box.get_process(999999)


def test_health_and_daemon_info(box):
    assert box.health().value.healthy
    before = box.daemon_info().value
    assert before.version
    box.run("true")
    after = box.daemon_info().value
    assert after.total_processes > before.total_processes
    assert after.uptime_secs >= before.uptime_secs
