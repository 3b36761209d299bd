#!/bin/sh
# The display and its VNC server on port 5901 (what `connect_desktop()`
# connects to by default), shared by every viewer. No VNC password: the
# sandbox proxy's key guards the tunnel (the client speaks both "None" and
# password auth; this server offers "None").
Xtigervnc "$DISPLAY" -geometry "$GEOMETRY" -depth 24 -rfbport 5901 \
  -SecurityTypes None -localhost no -AlwaysShared &
# The window manager once the display answers.
for i in $(seq 50); do [ -e "/tmp/.X11-unix/X${DISPLAY#:}" ] && break; sleep 0.1; done
exec openbox
