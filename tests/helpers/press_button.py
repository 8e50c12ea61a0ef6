#!/usr/bin/env python3
"""Opens URL in headless Chromium and clicks the button matching SELECTOR once it exists, through
the DevTools protocol on a pipe (--remote-debugging-pipe: fds 3 and 4, JSON messages ended by a
NUL byte), so that no websocket client is needed. Prints "clicked" and exits 0, or says why not.

    press_button.py CHROMIUM URL SELECTOR PROFILE_DIR [TIMEOUT_S]
"""
import json
import os
import select
import subprocess
import sys
import time


def main():
    chromium, url, selector, profile = sys.argv[1:5]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds():
        # Out of the way first (either may already be 3 or 4), then onto 3 and 4, inheritable.
        import fcntl
        read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
        write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    # close_fds=False: subprocess would close 3 and 4 after preexec_fn otherwise. Every other
    # descriptor of this script is close-on-exec (Python's default).
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
         "--user-data-dir=" + profile, "--remote-debugging-pipe", "about:blank"],
        preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    deadline = time.monotonic() + timeout
    pending = b""
    next_id = [0]

    def send(method, params=None, session=None):
        next_id[0] += 1
        message = {"id": next_id[0], "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(to_browser_w, json.dumps(message).encode() + b"\0")
        return next_id[0]

    def receive_until(predicate):
        nonlocal pending
        while True:
            while b"\0" in pending:
                raw, pending = pending.split(b"\0", 1)
                message = json.loads(raw)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([from_browser_r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium within %.0f s" % timeout)
            chunk = os.read(from_browser_r, 65536)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            pending += chunk

    def call(method, params=None, session=None):
        wanted = send(method, params, session)
        answer = receive_until(lambda m: m.get("id") == wanted)
        if "error" in answer:
            raise RuntimeError("%s: %s" % (method, answer["error"]))
        return answer.get("result", {})

    try:
        target = call("Target.createTarget", {"url": url})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        # The page fills its rows from the API: wait for the button, then click it.
        script = ("(() => { const b = document.querySelector(%s); if (!b) return false; b.click(); return true; })()"
                  % json.dumps(selector))
        while True:
            result = call("Runtime.evaluate", {"expression": script, "returnByValue": True}, session)
            if result.get("result", {}).get("value") is True:
                break
            if time.monotonic() > deadline:
                print("no element matches %s" % selector)
                return 1
            time.sleep(0.1)  # the page's rows come from its next fetch: polled, with the deadline above
        # The click's request is in flight: wait for the page to say it was accepted.
        check = "document.getElementById('toast').textContent"
        while time.monotonic() < deadline:
            text = call("Runtime.evaluate", {"expression": check, "returnByValue": True}, session)["result"].get("value", "")
            if text:
                print("clicked: " + text)
                return 0
            time.sleep(0.05)
        print("the page never said what became of the click")
        return 1
    finally:
        try:
            send("Browser.close")
        except OSError:
            pass
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()


if __name__ == "__main__":
    sys.exit(main())
