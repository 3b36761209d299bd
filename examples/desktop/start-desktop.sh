#!/bin/sh
Xvfb "$DISPLAY" -screen 0 "$GEOMETRY" -nolisten tcp &
# The display answers before the window manager and VNC start.
for i in $(seq 50); do [ -e "/tmp/.X11-unix/X${DISPLAY#:}" ] && break; sleep 0.1; done
openbox &
exec x11vnc -display "$DISPLAY" -forever -shared -rfbport 5901 -nopw -quiet
