"""Writes its greeting as TOML, then waits: the sandbox's long-running process."""
import os
import time

import tomli_w

with open("out.toml", "w") as f:
    f.write(tomli_w.dumps({"greeting": os.environ["GREETING"]}))
time.sleep(1e9)
