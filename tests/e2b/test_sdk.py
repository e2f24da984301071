"""Real E2B SDK code against a real warren server.

Run with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at warren
(scripts/test-e2b.sh does it for every pinned SDK version). Each test is
plain SDK usage, as a team leaving E2B would have written it.
"""

import asyncio
import inspect
import os
import sys
import threading
import time
import traceback
import urllib.request

import e2b
from e2b import AsyncSandbox, Sandbox

VERSION = tuple(int(x) for x in e2b.__version__.split(".")[:2]) if hasattr(e2b, "__version__") else (0, 0)
try:
    from importlib.metadata import version as _v

    VERSION = tuple(int(x) for x in _v("e2b").split(".")[:2])
except Exception:
    pass

GATEWAY = os.environ["E2B_SANDBOX_URL"]


def test_create_run_and_kill():
    sbx = Sandbox.create(metadata={"suite": "e2b"}, envs={"GREETING": "hello"})
    try:
        assert sbx.sandbox_id.isalnum() and sbx.sandbox_id.islower()
        r = sbx.commands.run("echo $GREETING from $(whoami) in $(pwd)")
        assert r.stdout == "hello from user in /home/user\n", r
        assert r.exit_code == 0
        try:
            sbx.commands.run("echo bad >&2; exit 3")
            raise AssertionError("a failing command must raise")
        except e2b.CommandExitException as e:
            assert e.exit_code == 3 and e.stderr == "bad\n", e
        r = sbx.commands.run("id -u", user="root")
        assert r.stdout.strip() == "0"
        assert sbx.is_running()
    finally:
        assert sbx.kill() is True
    assert not sbx.is_running()
    assert Sandbox.kill(sbx.sandbox_id) is False


def test_streaming_callbacks_background_and_stdin():
    sbx = Sandbox.create()
    try:
        out, err = [], []
        r = sbx.commands.run(
            "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done",
            on_stdout=out.append,
            on_stderr=err.append,
        )
        assert "".join(out) == "out1\nout2\nout3\n", out
        assert "".join(err) == "err1\nerr2\nerr3\n", err
        assert len(out) >= 2, "output arrives chunk by chunk"

        h = sbx.commands.run("sleep 30", background=True)
        assert h.pid > 0
        listed = [p.pid for p in sbx.commands.list()]
        assert h.pid in listed, listed
        assert sbx.commands.kill(h.pid) is True
        assert sbx.commands.kill(999999) is False

        h = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
        sbx.commands.send_stdin(h.pid, "typed\n")
        r = h.wait()
        assert r.stdout == "got:typed\n", r

        if hasattr(sbx.commands, "stream_input"):
            # Client-streaming input (SDK >= 2.58).
            h = sbx.commands.run("wc -c", background=True, stdin=True)
            sbx.commands.stream_input(h.pid, (b"x" * 1000 for _ in range(20)))
            sbx.commands.close_stdin(h.pid)
            assert h.wait().stdout.strip() == "20000"

        # Re-attach to a running command.
        h = sbx.commands.run("sleep 0.5; echo late", background=True)
        h2 = sbx.commands.connect(h.pid)
        assert h2.wait().stdout.endswith("late\n")
    finally:
        sbx.kill()


def test_timeout_of_a_command_kills_it():
    sbx = Sandbox.create()
    try:
        t = time.time()
        try:
            sbx.commands.run("sleep 30", timeout=1)
            raise AssertionError("must time out")
        except Exception as e:
            # The server ends the stream with deadline_exceeded at the deadline
            # (TimeoutException); old SDKs may hit their own read timeout first.
            if "Timeout" not in type(e).__name__:
                raise
        assert time.time() - t < 10
        # The deadline killed the process itself (envd semantics), not just the stream.
        deadline = time.time() + 5
        while [p for p in sbx.commands.list() if "sleep 30" in " ".join(p.args)]:
            assert time.time() < deadline, "the timed-out process is still running"
            time.sleep(0.1)
    finally:
        sbx.kill()


def test_pty():
    from e2b import PtySize

    sbx = Sandbox.create()
    try:
        h = sbx.pty.create(size=PtySize(rows=24, cols=80))
        # The resize lands while the shell sleeps between the two `stty size`.
        sbx.pty.send_stdin(h.pid, b"stty size; echo pty-$((6*7)); sleep 1.5; stty size; exit\n")
        time.sleep(0.5)
        sbx.pty.resize(h.pid, PtySize(rows=40, cols=120))
        chunks = []
        h.wait(on_pty=lambda d: chunks.append(bytes(d)))
        text = b"".join(chunks).decode(errors="replace")
        assert "pty-42" in text, text
        assert text.index("24 80") < text.index("40 120"), text
    finally:
        sbx.kill()


def test_files():
    from e2b import FileType

    sbx = Sandbox.create()
    try:
        info = sbx.files.write("notes/a.txt", "alpha")
        assert info.path == "/home/user/notes/a.txt", info
        assert sbx.files.read("notes/a.txt") == "alpha"
        assert sbx.files.read("/home/user/notes/a.txt", format="bytes") == b"alpha"
        assert sbx.files.exists("notes/a.txt")
        assert not sbx.files.exists("notes/none.txt")
        names = [e.name for e in sbx.files.list("notes")]
        assert names == ["a.txt"], names
        entry = sbx.files.list("/home/user")[0]
        assert entry.type in (FileType.DIR, FileType.FILE)
        assert sbx.files.make_dir("deep/er") is True
        assert sbx.files.make_dir("deep/er") is False
        sbx.files.rename("notes/a.txt", "deep/er/b.txt")
        assert sbx.files.read("deep/er/b.txt") == "alpha"
        sbx.files.remove("deep")
        assert not sbx.files.exists("deep")
        try:
            sbx.files.read("missing.txt")
            raise AssertionError("missing file must raise")
        except e2b.NotFoundException:
            pass
        if hasattr(sbx.files, "write_files"):
            from e2b.sandbox.filesystem.filesystem import WriteEntry

            sbx.files.write_files([WriteEntry(path="m/1.txt", data="one"), WriteEntry(path="m/2.txt", data=b"two")])
            assert sbx.files.read("m/2.txt") == "two"
        big = os.urandom(3 << 20)
        sbx.files.write("big.bin", big)
        assert sbx.files.read("big.bin", format="bytes") == big
        r = sbx.commands.run("stat -c %U big.bin")
        assert r.stdout.strip() == "user"
    finally:
        sbx.kill()


def test_watch_dir():
    sbx = Sandbox.create()
    try:
        sbx.files.make_dir("watched")
        handle = sbx.files.watch_dir("watched")
        sbx.files.write("watched/x.txt", "1")
        deadline = time.time() + 10
        names = []
        while time.time() < deadline and "x.txt" not in names:
            names += [ev.name for ev in handle.get_new_events()]
            time.sleep(0.1)
        handle.stop()
        assert "x.txt" in names, names
    finally:
        sbx.kill()


def test_signed_urls():
    sbx = Sandbox.create(secure=True) if VERSION < (2, 30) else Sandbox.create()
    try:
        sbx.files.write("shared.txt", "signed content")
        url = sbx.download_url("/home/user/shared.txt")
        assert "signature=" in url, url
        body = urllib.request.urlopen(urllib.request.Request(url, headers=_route(sbx))).read()
        assert body == b"signed content", body
        up = sbx.upload_url("/home/user/up.txt")
        req = urllib.request.Request(up, data=b"uploaded", method="POST", headers={**_route(sbx), "Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req).read()
        assert sbx.files.read("up.txt") == "uploaded"
        bad = url.replace("signature=v1_", "signature=v1_x")
        try:
            urllib.request.urlopen(urllib.request.Request(bad, headers=_route(sbx)))
            raise AssertionError("a bad signature must be refused")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    finally:
        sbx.kill()


def _route(sbx):
    # download_url/upload_url carry no sandbox id; a header-routed gateway
    # needs it in a header (or host routing with wildcard DNS).
    return {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}


def test_get_host_reaches_a_server_in_the_sandbox():
    sbx = Sandbox.create()
    try:
        sbx.files.write("site/index.html", "<h1>from the sandbox</h1>")
        sbx.commands.run("cd ~/site && python3 -m http.server 8080 >/dev/null 2>&1", background=True)
        host = sbx.get_host(8080)
        assert host.startswith(f"8080-{sbx.sandbox_id}."), host
        # Host routing on the gateway, as wildcard DNS would deliver it.
        deadline = time.time() + 15
        while True:
            try:
                req = urllib.request.Request(GATEWAY + "/index.html", headers={"Host": host})
                body = urllib.request.urlopen(req).read()
                break
            except urllib.error.HTTPError as e:
                if e.code != 502 or time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert body == b"<h1>from the sandbox</h1>", body
    finally:
        sbx.kill()


def test_set_timeout_expiry_info_connect_list():
    sbx = Sandbox.create(timeout=60, metadata={"team": "alpha"})
    other = Sandbox.create(metadata={"team": "beta"})
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == {"team": "alpha"}
        assert info.template_id == "base"
        sbx.set_timeout(120)
        assert sbx.get_info().end_at > info.end_at

        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("echo connected").stdout == "connected\n"

        from e2b import SandboxQuery

        found = Sandbox.list(query=SandboxQuery(metadata={"team": "alpha"}))
        items = found.next_items() if hasattr(found, "next_items") else found
        assert [s.sandbox_id for s in items] == [sbx.sandbox_id], items

        pages = Sandbox.list(limit=1)
        seen = []
        while pages.has_next:
            seen += [s.sandbox_id for s in pages.next_items()]
        assert sbx.sandbox_id in seen and other.sandbox_id in seen, seen

        short = Sandbox.create(timeout=2)
        time.sleep(4.5)
        assert not short.is_running(), "the sandbox must end at its timeout"
    finally:
        sbx.kill()
        other.kill()


def test_metrics_and_errors():
    sbx = Sandbox.create()
    try:
        if hasattr(sbx, "get_metrics"):
            m = sbx.get_metrics()
            assert isinstance(m, list)
            if m:
                assert m[0].mem_used > 0
        try:
            Sandbox.connect("doesnotexist000000000")
            raise AssertionError("connect to a missing sandbox must raise")
        except e2b.NotFoundException:
            pass
        try:
            Sandbox.create(template="no-such-template")
            raise AssertionError("unknown template must raise")
        except e2b.SandboxException as e:
            assert "no-such-template" in str(e)
    finally:
        sbx.kill()
    try:
        Sandbox.create(api_key="e2b_" + "0" * 40)
        raise AssertionError("a wrong key must raise")
    except e2b.AuthenticationException:
        pass


def test_async_api():
    async def main():
        sbx = await AsyncSandbox.create()
        try:
            r = await sbx.commands.run("echo async")
            assert r.stdout == "async\n"
            await sbx.files.write("a.txt", "x")
            assert await sbx.files.read("a.txt") == "x"
            many = await asyncio.gather(*[sbx.commands.run(f"echo {i}") for i in range(10)])
            assert [m.stdout for m in many] == [f"{i}\n" for i in range(10)]
        finally:
            await sbx.kill()

    asyncio.run(main())


def main():
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and inspect.isfunction(f)]
    only = sys.argv[1:]
    failed = []
    for name, fn in tests:
        if only and name not in only:
            continue
        t = time.time()
        try:
            fn()
            print(f"PASS {name} ({time.time() - t:.1f}s)", flush=True)
        except Exception:
            failed.append(name)
            print(f"FAIL {name}", flush=True)
            traceback.print_exc()
    print(f"{len(tests) - len(failed)} passed, {len(failed)} failed (e2b {'.'.join(map(str, VERSION))})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
