"""Least-privilege Redis users (inspector/io/acl.py) against a private redis-server started with an aclfile of
the lines `inspector acl` prints: the whole worker path (capture's on-demand set and previews on) as the worker user
with an empty ACL LOG, what the camera and reader users are refused, the line service as the coils user, the
operator's screen as the screen user, and the worker's start-time check."""

from __future__ import annotations

import hashlib
import os
import subprocess

import msgpack
import pytest
import redis
from conftest import events, make_cfg, worker_cmd
from test_line_redis import acceptance_coil, entries, line_config

from inspector import config
from inspector.feed import feed, messages, redis_adder, synthetic_payloads
from inspector.io import acl
from inspector.io.redis_server import PrivateRedis
from inspector.io.redis_streams import RedisStreams
from inspector.line.service import LineService
from inspector.pipeline import from_config

pytestmark = pytest.mark.redis

ADMIN = "admin-pw"
PASSWORDS = {"camera": "camera-pw", "worker": "worker-pw", "coils": "coils-pw", "reader": "reader-pw",
             "screen": "screen-pw"}
FRAMES, EVENTS = "inspect:{main}:frames", "inspect:{main}:events"
ON_DEMAND, PREVIEW = "inspect:{main}:capture", "inspect:{main}:frames:preview"


def roles_config() -> config.Config:
    """The built-in defaults (previews on) with capture on: the users' rules grant what those turn on."""
    return config.replace(config.load(None), capture={"enabled": True})


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server whose aclfile holds an admin `default` user, every role of line main (as `inspector acl
    --aclfile` prints it) and a worker user missing XACK; with AOF, so a restart keeps the data."""
    cfg = roles_config()
    lines = [f"user default on #{hashlib.sha256(ADMIN.encode()).hexdigest()} ~* &* +@all"]
    lines += [acl.role(name, cfg).aclfile_line(pw) for name, pw in PASSWORDS.items()]
    worker = acl.role("worker", cfg)
    lines.append(acl.Role("worker", "worker-noxack", "", (*worker.rules, "-xack")).aclfile_line("noxack-pw"))
    folder = tmp_path_factory.mktemp("acl")
    (folder / "users.acl").write_text("\n".join(lines) + "\n")
    server = PrivateRedis(appendonly=True, extra=("--aclfile", str(folder / "users.acl")))
    server.start()
    yield server
    server.stop()


def url(server: PrivateRedis, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def as_role(server: PrivateRedis, role: str) -> str:
    return url(server, f"{role}-main", PASSWORDS[role])


@pytest.fixture
def admin(acl_server: PrivateRedis):
    client = redis.Redis.from_url(url(acl_server, "default", ADMIN))
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


def denied(client: redis.Redis, *command: object) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_the_whole_worker_path_runs_as_the_worker_user_with_an_empty_acl_log(acl_server, admin, tiny_engine,
                                                                            tmp_path):
    camera = redis.Redis.from_url(as_role(acl_server, "camera"))
    add = redis_adder(camera, FRAMES)
    feed(add, messages(synthetic_payloads(0, 2), "cam-a"), 6)  # the camera user writes the frames
    admin.sadd(ON_DEMAND, "camera:cam-a")  # an operator asks for cam-a's frames: SMEMBERS on its own connection
    cfg = make_cfg(as_role(acl_server, "worker"), tiny_engine, redis__claim_every_s=0.01,
                   capture__enabled=True, capture__folder=str(tmp_path / "capture"), preview__enabled=True)
    gone = RedisStreams(config.replace(cfg, redis={"consumer": "gone"}).redis)
    gone.wait_ready(5)
    assert len(gone.read(2, None)) == 2  # a worker that died holding two frames (no heartbeat): to be claimed
    pipe = from_config(cfg)  # check_permissions passes
    pipe.run(burst=True, handle_signals=False)  # read, claim, publish + ack + trim, heartbeat, stats, probe
    assert len(events(admin)) == 6 and admin.xpending(FRAMES, "inspectors")["pending"] == 0
    assert admin.xlen(FRAMES) == 0  # trimmed by the worker user's script
    assert admin.hget("inspect:{main}:stats:test-worker", "frames") is not None
    acl_server.restart()  # an outage: the server goes away and comes back with its data and its aclfile
    feed(redis_adder(redis.Redis.from_url(as_role(acl_server, "camera")), FRAMES),
         messages(synthetic_payloads(0, 2), "cam-a", start_seq=6), 4)
    pipe.run(burst=True, handle_signals=False)
    pipe.close()  # DEL of its heartbeat: the selector's one key pattern
    admin = redis.Redis.from_url(url(acl_server, "default", ADMIN))
    assert len(events(admin)) == 10 and admin.xpending(FRAMES, "inspectors")["pending"] == 0
    assert not admin.exists("inspect:{main}:frames:alive:inspectors:test-worker")
    assert admin.ttl(f"{PREVIEW}:cam-a") > 0  # SET ... EX of the preview
    assert list((tmp_path / "capture").glob("*/images/*"))  # the on-demand set was read: cam-a's frames captured
    assert admin.acl_log() == []  # not one command of the worker's was refused, before or after the outage


def test_a_camera_writes_frames_and_nothing_else(acl_server, admin) -> None:
    camera = redis.Redis.from_url(as_role(acl_server, "camera"))
    camera.xadd(FRAMES, {"f": "1"})
    admin.xadd(EVENTS, {"e": "1"})
    assert denied(camera, "XREAD", "STREAMS", EVENTS, "0")  # cannot read events
    assert denied(camera, "XRANGE", FRAMES, "-", "+")  # nor frames
    assert denied(camera, "XDEL", FRAMES, "0-1") and denied(camera, "DEL", FRAMES)  # cannot delete frames
    assert denied(camera, "XADD", EVENTS, "*", "e", "forged")  # nor forge events
    assert denied(camera, "FLUSHALL") and denied(camera, "CONFIG", "GET", "*")
    assert denied(camera, "XADD", "inspect:{other}:frames", "*", "f", "1")  # another line's stream
    assert admin.xlen(FRAMES) == 1 and admin.xlen(EVENTS) == 1


def test_the_worker_cannot_forge_frames_or_delete_streams(acl_server, admin) -> None:
    worker = redis.Redis.from_url(as_role(acl_server, "worker"))
    admin.xadd(FRAMES, {"f": "1"})
    assert denied(worker, "XADD", FRAMES, "*", "f", "forged") and denied(worker, "DEL", FRAMES)
    assert denied(worker, "XDEL", FRAMES, "0-1") and denied(worker, "DEL", EVENTS)
    assert denied(worker, "FLUSHALL") and denied(worker, "CONFIG", "SET", "appendonly", "no")
    assert denied(worker, "XRANGE", "inspect:{other}:frames", "-", "+")  # another line
    assert admin.xlen(FRAMES) == 1


def test_a_reader_reads_events_and_cannot_write(acl_server, admin) -> None:
    admin.xadd(EVENTS, {"e": "1"})
    reader = redis.Redis.from_url(as_role(acl_server, "reader"))
    assert len(reader.xrange(EVENTS)) == 1 and reader.xread({EVENTS: "0"})
    assert denied(reader, "XADD", EVENTS, "*", "e", "forged") and denied(reader, "XDEL", EVENTS, "0-1")
    assert denied(reader, "XGROUP", "CREATE", EVENTS, "mine", "0")  # a group is a write too
    assert denied(reader, "XRANGE", FRAMES, "-", "+") and denied(reader, "FLUSHALL")
    assert admin.xlen(EVENTS) == 1


def test_the_line_service_runs_as_the_coils_user(acl_server, admin, tmp_path) -> None:
    acceptance_coil(admin)  # events and the coil end as the worker and the tracking system write them
    service = LineService(config.from_dict(line_config(as_role(acl_server, "coils"), tmp_path)))
    service.run(burst=True, handle_signals=False)
    service.close()
    (report,) = entries(admin)
    assert report["coil"] == "C-ACC" and (tmp_path / "C-ACC.json").exists()
    assert admin.acl_log() == []


def test_the_screen_reads_the_line_and_writes_only_its_alarms(acl_server, admin, tmp_path) -> None:
    """Rounds of the screen's view (inspector/screen/view.py) as the screen user: previews by GET (cameras placed)
    and by SCAN (none placed), events, the coil so far, workers, reports, an alarm fired and cleared (the ALARM
    script, loaded on first use), with an empty ACL LOG; and what the screen user is refused."""
    from inspector.screen.view import LineView

    acceptance_coil(admin)
    service = LineService(config.from_dict(line_config(as_role(acl_server, "coils"), tmp_path)))
    service.run(burst=True, handle_signals=False)  # the coil folded and reported: state, log, coils stream
    service.close()
    acceptance_coil(admin, "C-NOW")  # a coil still open: the screen's current coil
    LineService(config.from_dict(line_config(as_role(acl_server, "coils"), tmp_path, close_every_s=3600))).step(
        block_ms=None)
    admin.set(f"{PREVIEW}:top-1", msgpack.packb({"camera": "top-1", "seq": 1, "jpeg": b"\xff\xd8"}), ex=60)
    admin.hset("inspect:{main}:stats:w-0", mapping={"frames": 10, "uptime_s": 5})
    alive = "inspect:{main}:frames:alive:inspectors:w-0"
    rules = {"alarms": {"rules": [{"name": "worker-not-ready", "kind": "worker_not_ready"}]}}
    placed = config.from_dict({**line_config(as_role(acl_server, "screen"), tmp_path), **rules})
    unplaced = config.from_dict({**line_config(as_role(acl_server, "screen"), tmp_path), **rules, "line": {}})
    client = redis.Redis.from_url(as_role(acl_server, "screen"))
    view = LineView(placed, client)
    first = view.poll()  # no worker alive: its alarm fires (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA)
    assert [t.state for t in first.transitions] == ["fired"] and first.previews == {"top-1": b"\xff\xd8"}
    assert first.data["coil"]["coil"] == "C-NOW" and first.data["reports"][0]["coil"] == "C-ACC"
    admin.set(alive, b"1")
    second = view.poll()  # XREAD from the cursor; the worker is up: the alarm clears (HDEL)
    assert [t.state for t in second.transitions] == ["cleared"] and second.data["workers"][0]["ready"]
    assert LineView(unplaced, client).poll().previews == {"top-1": b"\xff\xd8"}  # found by SCAN
    assert admin.xlen("inspect:{main}:alarms") == 2 and admin.hlen("inspect:{main}:alarms:active") == 0
    assert admin.acl_log() == []
    assert denied(client, "XADD", FRAMES, "*", "f", "forged") and denied(client, "XADD", EVENTS, "*", "e", "x")
    assert denied(client, "DEL", "inspect:{main}:alarms") and denied(client, "DEL", f"{PREVIEW}:top-1")
    assert denied(client, "FLUSHALL") and denied(client, "SET", f"{PREVIEW}:top-1", "x")
    assert denied(client, "HSET", "inspect:{main}:line:cameras", "top-1", "forged")  # the line service's state
    assert denied(client, "EVAL", "return redis.call('XADD', KEYS[1], '*', 'e', 'x')", 1, EVENTS)
    client.close()


def test_a_worker_user_without_xack_stops_at_start_naming_it(acl_server, admin, tiny_engine, worker_env) -> None:
    env = {**worker_env, "INSPECTOR_REDIS_URL": url(acl_server, "worker-noxack", "noxack-pw")}
    cmd = [c for c in worker_cmd("unused", tiny_engine, "--burst") if c not in ("--redis-url", "unused")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 78, out.stderr[-2000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("Error:")]
    assert "may not run XACK" in line and "`inspector acl --role worker --line main`" in line
    assert "noxack-pw" not in out.stderr and admin.xlen(EVENTS) == 0


@pytest.mark.parametrize("command", [*acl.WORKER_COMMANDS, "xadd", "del"])
def test_every_command_the_worker_needs_is_checked_at_start(acl_server, admin, command: str) -> None:
    """Whichever one the user lacks, the start-time check names it (XADD and DEL: their selectors removed)."""
    from inspector.errors import SourceRefused

    plain = config.replace(config.load(None), preview={"enabled": False})  # the parts beside: the next test
    rules = [r for r in acl.role("worker", plain).rules if not r.endswith(f" +{command})")]
    rules += [] if len(rules) < len(acl.role("worker", plain).rules) else [f"-{command}"]
    admin.execute_command("ACL", "SETUSER", "worker-minus", "reset", "on", ">minus-pw", *rules)
    cfg = config.load(None, url(acl_server, "worker-minus", "minus-pw"))
    source = RedisStreams(config.replace(cfg, redis={"consumer": "w-minus"}).redis)
    with pytest.raises(SourceRefused) as err:
        source.wait_ready(5)
    source.close()
    assert f"may not run {command.upper()} " in str(err.value) and "inspector acl --role worker" in str(err.value)


@pytest.mark.parametrize("selector, named", [
    (f"(%R~{ON_DEMAND} +smembers)", f"may not run SMEMBERS (SMEMBERS {ON_DEMAND})"),  # capture.enabled
    (f"(~{PREVIEW}:* +set)", f"may not run SET on {PREVIEW}:~probe (SET "),  # preview.enabled: SET is the root's
])
def test_a_worker_user_without_what_capture_or_previews_need_stops_at_start(acl_server, admin, tiny_engine, tmp_path,
                                                                             selector: str, named: str) -> None:
    """Through from_config, as `inspector run` starts: the check covers the taps' own connections too."""
    from inspector.errors import SourceRefused

    rules = acl.role("worker", roles_config()).rules
    assert selector in rules
    admin.execute_command("ACL", "SETUSER", "worker-part", "reset", "on", ">part-pw",
                          *(r for r in rules if r != selector))
    cfg = make_cfg(url(acl_server, "worker-part", "part-pw"), tiny_engine, capture__enabled=True,
                   capture__folder=str(tmp_path / "capture"), preview__enabled=True)
    with pytest.raises(SourceRefused) as err:
        from_config(cfg)
    (line,) = str(err.value).splitlines()
    assert named in line and "`inspector acl --role worker --line main`" in line
    assert not (tmp_path / "capture").exists() and admin.xlen(EVENTS) == 0


def test_a_password_on_the_command_line_is_warned_about_and_never_printed(acl_server, admin, tiny_engine,
                                                                           worker_env) -> None:
    out = subprocess.run(worker_cmd(as_role(acl_server, "worker"), tiny_engine, "--burst"), env=worker_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--redis-url carries a password" in out.stderr and "process list" in out.stderr
    assert PASSWORDS["worker"] not in out.stderr + out.stdout


@pytest.mark.parametrize("role, command", [
    ("camera", ["XADD", "inspect:{L}:frames", "*", "f", "1"]),
    ("worker", ["XACK", "inspect:{L}:frames", "inspectors", "0-1"]),
    ("worker", ["DEL", "inspect:{L}:frames:alive:inspectors:w-1"]),  # DEL: its heartbeat keys only (selector)
    ("coils", ["XADD", "inspect:{L}:coils", "*", "c", "1"]),
    ("reader", ["XRANGE", "inspect:{L}:events", "-", "+"]),
])
def test_printed_lines_grant_their_line_only(acl_server, admin, role: str, command: list[str]) -> None:
    # the SETUSER line as printed, given to redis-cli on stdin (as README "Security" says)
    line = acl.role(role, config.load(None), "line-2").setuser("pw")
    cli = subprocess.run(["redis-cli", "-p", str(acl_server.port), "--user", "default", "--pass", ADMIN,
                          "--no-auth-warning"], input=line + "\n", capture_output=True, text=True, timeout=30)
    assert cli.stdout.strip() == "OK", cli.stdout + cli.stderr
    def dryrun(cmd: list[str]) -> bytes:
        return admin.execute_command("ACL", "DRYRUN", f"{role}-line-2", *cmd)
    assert dryrun([c.replace("{L}", "{line-2}") for c in command]) == b"OK"
    assert dryrun([c.replace("{L}", "{main}") for c in command]) != b"OK"  # another line's key
    assert dryrun(["DEL", command[1].replace("{L}", "{line-2}").replace(":alive:inspectors:w-1", "")]) != b"OK"


def test_cli_prints_every_role_with_hashed_passwords() -> None:
    from click.testing import CliRunner

    from inspector.cli import main

    out = CliRunner().invoke(main, ["acl", "--aclfile", "--password-stdin", "--line", "hot"],
                             input="a\nb\nc\nd\ne\n")
    assert out.exit_code == 0, out.output
    users = out.stdout.splitlines()  # nothing but aclfile lines: what each user is for goes to stderr
    assert [u.split()[1] for u in users] == ["camera-hot", "worker-hot", "coils-hot", "reader-hot", "screen-hot"]
    assert all(f"#{hashlib.sha256(p.encode()).hexdigest()}" in u for u, p in zip(users, "abcde", strict=True))
    short = CliRunner().invoke(main, ["acl", "--role", "worker", "--role", "camera", "--password-stdin"], input="x\n")
    assert short.exit_code == 2 and "2 non-empty line(s)" in short.output
    assert os.linesep not in acl.role("worker", config.load(None)).setuser()
