"""Preloaded (-m) app for tests/supervision.rs. At import, in the group
parent: starts a helper subprocess that exits 3 and is never waited for, and
installs an at-fork hook chosen by FORK_HOOK (exit: os._exit(1) in every new
child; hang: sleep for an hour before the child can serve)."""
import os
import subprocess
import time

HELPER = subprocess.Popen(["sh", "-c", "exit 3"])
HOOK = os.environ.get("FORK_HOOK", "")
if HOOK == "exit":
    os.register_at_fork(after_in_child=lambda: os._exit(1))
elif HOOK == "hang":
    os.register_at_fork(after_in_child=lambda: time.sleep(3600))


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    body = "pid=%d\nhelper=%d\n" % (os.getpid(), HELPER.pid)
    if path == "/spawn":
        body += "rc=%d\n" % subprocess.run(["sh", "-c", "exit 7"]).returncode
    body = body.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
