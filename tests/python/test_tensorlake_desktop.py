"""The tensorlake client's desktop (`sandbox.connect_desktop()`) against a
sandbox of the desktop example (`examples/desktop`, built here once with `sbx
image build`). The client waits for port 5901 with a `/bin/bash -c "exec
3<>/dev/tcp/127.0.0.1/5901"` probe (POST /api/v1/processes/run), then speaks
VNC (RFB 3.8, security "None") through one WebSocket TCP tunnel
(/api/v1/tunnels/tcp?port=5901) for PNG screenshots, keys and the mouse."""

import contextlib
import os
import pathlib
import re
import struct
import subprocess
import zlib

import pytest
from tensorlake.sandbox import SandboxError

from tl_helpers import eventually, tl, unique  # noqa: F401 (fixtures)

ROOT = pathlib.Path(__file__).resolve().parents[2]
# examples/desktop/Dockerfile's GEOMETRY.
WIDTH, HEIGHT = 1280, 800

pytestmark = pytest.mark.usefixtures("torn_down")


@pytest.fixture(scope="module")
def desktop_image(sbx):
    """The desktop example, built once for the module with the CLI (Debian
    packages through the host's mirror: a minute or two)."""
    name = unique("tl-desktop")
    sbx_bin = os.environ.get("SBX_BIN", str(ROOT / "target/release/sbx"))
    cli = [sbx_bin, "--api-url", sbx.api_url, "image"]
    built = subprocess.run(
        [*cli, "build", "-t", name, "--progress", "plain", str(ROOT / "examples/desktop")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == name
    yield name
    subprocess.run([*cli, "rm", name], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def desk(tl, desktop_image):  # noqa: F811
    """A sandbox of the desktop image; its entrypoint starts the display."""
    with tl.sandbox(name=unique("tl-desk"), image=desktop_image, memory_mb=2048) as sandbox:
        yield sandbox


def png_rows(png: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the unfiltered rows of an 8-bit RGB(A) PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    pos, header, idat = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, color, interlace) in ((8, 2, 0), (8, 6, 0)), (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    assert len(raw) == height * (stride + 1)
    rows, prev = [], bytes(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = bytes(line)
        rows.append(prev)
    return width, height, bpp, rows


def bright_share(png: bytes, x0: int, y0: int, x1: int, y1: int) -> float:
    """The share of pixels in [x0, x1) x [y0, y1) brighter than mid-grey."""
    _, _, bpp, rows = png_rows(png)
    bright = total = 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            r, g, b = rows[y][x * bpp : x * bpp + 3]
            bright += r + g + b > 3 * 128
            total += 1
    return bright / total


def test_screenshot_is_a_png_of_the_whole_screen(desk):
    # Right after create: the client waits for the VNC server itself.
    with desk.connect_desktop() as d:
        assert (d.width, d.height) == (WIDTH, HEIGHT)
        png = d.screenshot()
        # The server is shared: a second viewer at the same time.
        with desk.connect_desktop(shared=True) as other:
            assert png_rows(other.screenshot())[:2] == (WIDTH, HEIGHT)
        assert png_rows(d.screenshot())[:2] == (WIDTH, HEIGHT)
    width, height, bpp, rows = png_rows(png)
    assert (width, height) == (WIDTH, HEIGHT)
    # An opaque image (no window yet: openbox's black root window).
    if bpp == 4:
        assert all(set(row[3::4]) == {255} for row in rows)
    assert bright_share(png, 700, 500, 900, 700) == 0


def test_a_password_is_not_needed(desk):
    # The example offers VNC security "None"; a password given anyway is unused.
    with desk.connect_desktop(password="unused") as d:
        assert png_rows(d.screenshot())[:2] == (WIDTH, HEIGHT)


def test_nothing_listening_times_out(desk):
    with pytest.raises(SandboxError, match="timed out"):
        desk.connect_desktop(port=5999, connect_timeout=2)


def test_a_right_click_opens_the_root_menu_and_escape_closes_it(desk):
    """What the screenshots show follows the input: openbox's root menu opens
    at a right click on the desktop and closes on Escape."""
    menu = (230, 230, 300, 320)  # inside the menu, clear of the pointer at (200, 200)
    with desk.connect_desktop() as d:
        assert bright_share(d.screenshot(), *menu) == 0
        d.right_click(200, 200)
        eventually(lambda: bright_share(d.screenshot(), *menu) > 0.5, "the root menu on the screenshot", every=0.5)
        d.press("Escape")
        eventually(lambda: bright_share(d.screenshot(), *menu) == 0, "the root menu closed", every=0.5)


EVENT = re.compile(r"^(\w+) event, serial")
FIELD = re.compile(r"root:\((-?\d+),(-?\d+)\)|state (0x[0-9a-f]+)|button (\d+)|keysym 0x[0-9a-f]+, (\w+)\)")


def xev_events(lines: list[str]) -> list[dict]:
    """xev's output as [{type, root, state, button?, keysym?}]."""
    events: list[dict] = []
    for line in lines:
        m = EVENT.match(line)
        if m:
            events.append({"type": m.group(1)})
        elif events:
            for f in FIELD.finditer(line):
                if f.group(1):
                    events[-1]["root"] = (int(f.group(1)), int(f.group(2)))
                elif f.group(3):
                    events[-1]["state"] = int(f.group(3), 16)
                elif f.group(4):
                    events[-1]["button"] = int(f.group(4))
                else:
                    events[-1]["keysym"] = f.group(5)
    return events


class Xev:
    """An `xev` window on the display and what it has seen since the last step."""

    # Modifiers the client adds to type a character (shift, caps lock).
    SHIFTING = {"Shift_L", "Shift_R", "Caps_Lock"}

    def __init__(self, sandbox) -> None:
        self.sandbox = sandbox
        # Client area about (101, 120)-(501, 420): openbox honours the position.
        self.proc = sandbox.start_process(
            "stdbuf",
            args=["-oL", "xev", "-geometry", "400x300+100+100", "-event", "keyboard", "-event", "mouse", "-event", "structure"],
            env={"DISPLAY": ":1"},
        )
        self.seen = 0
        eventually(lambda: any(e["type"] == "MapNotify" for e in self.events()), "the xev window")
        self.seen = len(self.events())

    def events(self) -> list[dict]:
        return xev_events(self.sandbox.get_stdout(self.proc.pid).lines)

    def step(self, what: str, project, expected: list) -> None:
        """Waits until the events since the last step, projected (None drops
        one), are `expected`."""

        def seen() -> list:
            return [p for p in map(project, self.events()[self.seen :]) if p is not None]

        eventually(lambda: seen() == expected, f"{what}: {expected}; seen {seen()}", timeout=20, every=0.2)
        self.seen = len(self.events())

    def buttons(self, what: str, expected: list) -> None:
        self.step(what, lambda e: (e["type"], e["button"], e["root"]) if "button" in e else None, expected)

    def keys(self, what: str, expected: list) -> None:
        def key(e: dict):
            if e["type"] in ("KeyPress", "KeyRelease") and e.get("keysym") not in self.SHIFTING:
                return e["type"], e.get("keysym")
            return None

        self.step(what, key, expected)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.sandbox.kill_process(self.proc.pid)


def test_keys_and_the_mouse_reach_a_window(desk):
    """Each call of the client's desktop API arrives as the X events it names,
    at the coordinates given."""
    xev = Xev(desk)
    press = lambda b, at: [("ButtonPress", b, at), ("ButtonRelease", b, at)]  # noqa: E731
    try:
        with desk.connect_desktop() as d:
            d.move_mouse(320, 260)
            xev.step("a move", lambda e: e["root"] if e["type"] == "MotionNotify" else None, [(320, 260)])
            # The click gives the window the focus for the keys.
            d.left_click(300, 250)
            xev.buttons("a left click", press(1, (300, 250)))
            d.right_click(310, 255)
            xev.buttons("a right click", press(3, (310, 255)))
            d.middle_click(310, 255)
            xev.buttons("a middle click", press(2, (310, 255)))
            d.double_click(300, 250)
            xev.buttons("a double click", press(1, (300, 250)) * 2)
            d.scroll_up(2, 300, 250)
            xev.buttons("scrolling up", press(4, (300, 250)) * 2)
            d.scroll_down(1, 300, 250)
            xev.buttons("scrolling down", press(5, (300, 250)))
            d.mouse_press("left", 330, 270)
            xev.buttons("a press", [("ButtonPress", 1, (330, 270))])
            d.mouse_release("left", 340, 280)
            xev.buttons("a release", [("ButtonRelease", 1, (340, 280))])

            d.press(["ctrl", "c"])
            xev.keys(
                "ctrl+c",
                [("KeyPress", "Control_L"), ("KeyPress", "c"), ("KeyRelease", "c"), ("KeyRelease", "Control_L")],
            )
            d.press("Enter")
            xev.keys("enter", [("KeyPress", "Return"), ("KeyRelease", "Return")])
            d.key_down("a")
            xev.keys("a key held", [("KeyPress", "a")])
            d.key_up("a")
            xev.keys("a key let go", [("KeyRelease", "a")])
            # Last: what a typed character's key release reads as depends on
            # when the client lets go of shift, so only the presses count. A
            # press whose keysym line xev has not written yet matches nothing.
            d.type_text("Hi!")
            presses = lambda e: e.get("keysym", "(not read whole yet)") if e["type"] == "KeyPress" and e.get("keysym") not in Xev.SHIFTING else None  # noqa: E731
            xev.step("typed text", presses, ["H", "i", "exclam"])
            with pytest.raises(SandboxError, match="unsupported desktop key"):
                d.press("no-such-key")
            png = d.screenshot()
        # The xev window is on the screenshot: white, where the root was black.
        assert bright_share(png, 200, 300, 400, 400) > 0.9
    finally:
        xev.kill()
