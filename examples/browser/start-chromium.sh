#!/bin/sh
# gVisor is the sandbox: Chromium's own (namespaces, seccomp) is off.
exec chromium \
  --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --no-first-run --no-default-browser-check \
  --remote-debugging-address=127.0.0.1 --remote-debugging-port=9222 \
  --user-data-dir=/root/chromium-profile \
  "${START_URL:-about:blank}"
